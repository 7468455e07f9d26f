// The technician's page: plain JavaScript, no build step, nothing loaded from elsewhere. Every text from the
// gateway is put on the page as text (never as HTML).
"use strict";

const $ = (sel) => document.querySelector(sel);
let session = {};
let events = null;
let following = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  if (opts.body !== undefined) {
    opts.method = opts.method || "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.body);
  }
  if (opts.method === "POST") opts.headers["X-Gateway-Page"] = "1";
  const resp = await fetch(path, opts);
  let data = {};
  try { data = await resp.json(); } catch (e) { data = { error: "not JSON (" + resp.status + ")" }; }
  if (resp.status === 401 && !path.startsWith("/api/login")) { showSignIn(data.error); throw new Error("sign in"); }
  if (!resp.ok) throw new Error(data.error || ("HTTP " + resp.status));
  return data;
}

function ago(ms, now) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, Math.round(((now || Date.now()) - ms) / 1000));
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 129600) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}

function fmt(v) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") {
    if (!Number.isFinite(v)) return String(v);
    if (Math.abs(v) >= 1e6) return v.toLocaleString("en-US", { maximumFractionDigits: 3 }).replace(/,/g, "\u2009");
    return String(v);
  }
  return String(v);
}

function stateBadge(ok, okText, badText, warn) {
  return el("span", { class: "state " + (ok ? "ok" : (warn ? "warn" : "bad")) }, ok ? okText : badText);
}

function banner(text, bad) {
  const b = $("#banner");
  b.hidden = !text;
  b.className = "banner" + (bad ? " bad" : "");
  b.textContent = text || "";
}

// While the sign-in form is shown, a view that was still loading (the page opened, a click on "Sign in" before it
// finished) must not replace it: route() clears this when it starts a view.
let signInShown = false;

function setMain(...children) {
  if (signInShown) return;
  $("#main").replaceChildren(...children);
}

function stopStreams() {
  if (events) { events.close(); events = null; }
  if (following) { clearInterval(following); following = null; }
}

// ------------------------------------------------------------------ session

async function loadSession() {
  session = await api("/api/session");
  $("#site").textContent = session.site;
  $("#version").textContent = "v" + session.version;
  document.title = session.site + " - meter-gateway";
  const who = $("#who");
  who.replaceChildren();
  if (session.signed_in) {
    who.append("signed in", el("button", { onclick: async () => { await api("/api/logout", { body: {} }); await loadSession(); route(); } }, "Sign out"));
  } else if (session.password_set) {
    who.append(el("button", { onclick: () => showSignIn() }, "Sign in"));
  } else {
    who.append(el("span", { class: "muted", title: "set monitoring.page.password_file to change things from the page" }, "read only"));
  }
}

function showSignIn(message) {
  stopStreams();
  const input = el("input", { type: "password", id: "password", autocomplete: "current-password", placeholder: "password" });
  const msg = el("p", { id: "signin-message", class: "muted" }, message || "");
  const form = el("form", { class: "signin card", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      await api("/api/login", { body: { password: input.value } });
      await loadSession();
      route();
    } catch (e) { msg.textContent = e.message; msg.className = "problem"; }
  } }, el("h2", {}, "Sign in"), el("p", { class: "muted" }, "The password set in monitoring.page on this gateway."),
  input, el("button", { class: "primary", type: "submit", id: "signin" }, "Sign in"), msg);
  signInShown = false;
  setMain(form);
  signInShown = true;
  input.focus();
}

function needsPassword() {
  if (!session.password_set) { banner("Read only: set monitoring.page.password_file on the gateway to change things from the page.", false); return true; }
  if (!session.signed_in) { showSignIn("Sign in to do this."); return true; }
  return false;
}

// ------------------------------------------------------------------ overview

function problemBox(p) {
  const what = (p.check || "problem").replace(/_/g, " ");
  const who = p.sink || p.meter || p.bus || p.cloud || p.task || "";
  return el("div", { class: "problem", "data-check": p.check }, el("strong", {}, what + (who ? " (" + who + ")" : "") + ":"),
    p.detail ? " " + p.detail : "", p.todo ? el("span", { class: "todo" }, "What to do: " + p.todo) : null);
}

async function overview() {
  const o = await api("/api/overview");
  const r = o.report;
  $("#site").textContent = o.site;
  $("#version").textContent = "v" + o.version;
  const clock = r.clock || {};
  const q = r.queue || {};
  const cards = el("div", { class: "cards" },
    el("div", { class: "card" }, el("h3", {}, "Gateway", stateBadge(o.problems.length === 0, "healthy", o.problems.length + " problem(s)")),
      el("div", {}, "running since ", ago(o.started_ms, o.now_ms)), el("div", { class: "muted" }, "configuration: " + o.config_path)),
    el("div", { class: "card" }, el("h3", {}, "Clock", stateBadge(!!clock.trusted, "synchronised", "not synchronised")),
      el("div", {}, clock.trusted ? "readings stamped with the time" : "readings held until the clock is set: " + (r.held || 0))),
    el("div", { class: "card" }, el("h3", {}, "Queue", stateBadge(!q.gone, "ok", "file gone")),
      el("div", {}, ((q.bytes || 0) / 1e6).toFixed(1) + " MB of " + ((q.max_bytes || 0) / 1e6).toFixed(0) + " MB")));
  const sinks = el("div", { class: "cards" }, Object.entries(r.sinks || {}).map(([name, s]) =>
    el("div", { class: "card sink" }, el("h3", {}, name, stateBadge(!s.failing, "delivering", "failing")),
      s.failing && s.failing_since_ms ? el("div", {}, "failing since " + new Date(s.failing_since_ms).toISOString().slice(0, 19).replace("T", " ") + " UTC (" + ago(s.failing_since_ms, o.now_ms) + ")") : null,
      el("div", {}, "last delivery: " + ago(s.last_delivery_ms, o.now_ms)),
      el("div", {}, "waiting: " + s.depth + (s.oldest_age_s ? " (oldest " + Math.round(s.oldest_age_s) + " s)" : "")),
      el("div", {}, "dead letters: " + s.dead_letters),
      s.failing && s.last_error ? el("div", { class: "problem" }, s.last_error) : null)));
  setMain(el("h2", {}, "Needs attention"),
    o.problems.length ? el("div", { id: "problems" }, o.problems.map(problemBox)) : el("p", { id: "problems" }, "Nothing: every meter answers and every platform takes its readings."),
    cards, el("h2", {}, "Platforms"), sinks);
  if (!following && !signInShown) following = setInterval(() => overview().catch(() => {}), 5000);
}

// ------------------------------------------------------------------ meters

function valuesTable(last) {
  if (!last) return el("p", { class: "muted" }, "no reading yet");
  return el("table", { class: "values" }, el("tbody", {}, last.values.map((v) =>
    el("tr", {}, el("td", {}, v.quantity), el("td", { class: "num", "data-q": v.quantity }, fmt(v.value)), el("td", {}, v.unit)))));
}

function meterCard(m) {
  const card = el("div", { class: "card meter", id: "meter-" + m.name, "data-meter": m.name },
    el("h3", {}, el("a", { href: "#/meter/" + encodeURIComponent(m.name) }, m.name), stateBadge(!m.failing, "answering", "failing")),
    el("div", { class: "muted" }, m.describe),
    el("div", { class: "error" }, m.failing && m.last_problem ? el("div", { class: "problem" }, m.last_problem) : null),
    el("div", { class: "stamp muted" }, m.last ? "read " + m.last.ts : ""),
    el("div", { class: "vals" }, valuesTable(m.last)));
  return card;
}

function updateMeterCard(name, m, now) {
  const card = document.querySelector('[data-meter="' + CSS.escape(name) + '"]');
  if (!card) return;
  card.querySelector(".state").replaceWith(stateBadge(!m.failing, "answering", "failing"));
  card.querySelector(".error").replaceChildren(m.failing && m.last_problem ? el("div", { class: "problem" }, m.last_problem) : "");
  card.querySelector(".stamp").textContent = m.last ? "read " + m.last.ts + " (" + ago(m.last.ts_ms, now) + ")" : "";
  card.querySelector(".vals").replaceChildren(valuesTable(m.last));
}

function follow(meter) {
  stopStreams();
  if (signInShown) return;
  events = new EventSource("/api/events" + (meter ? "?meter=" + encodeURIComponent(meter) : ""));
  events.onmessage = (ev) => {
    const d = JSON.parse(ev.data);
    for (const [name, m] of Object.entries(d.meters)) updateMeterCard(name, m, d.now_ms);
  };
}

async function meters() {
  const d = await api("/api/meters");
  setMain(el("h2", {}, "Meters"), el("p", { class: "muted" }, "Values update every second."),
    el("div", { class: "cards" }, d.meters.map(meterCard)));
  follow();
}

function registersTable(rows) {
  if (!rows) return el("p", { class: "muted" }, "not a Modbus meter: no registers");
  return el("div", { class: "table-wrap" }, el("table", { id: "registers" }, el("thead", {}, el("tr", {},
    ["value", "register", "FC", "type", "words", "order", "decoded", "other order"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, el("td", {}, r.quantity), el("td", {}, r.address), el("td", {}, r.function),
      el("td", {}, r.type + (r.scale !== 1 ? " x" + r.scale : "")), el("td", {}, r.words ? r.words.join(" ") : "-"),
      el("td", {}, r.word_order), el("td", { class: "num" }, fmt(r.value)), el("td", { class: "num muted" }, fmt(r.other_order)))))));
}

async function meter(name) {
  const m = await api("/api/meters/" + encodeURIComponent(name));
  const errors = Object.entries(m.read_errors || {});
  const hour = Object.entries(m.errors_last_hour || {});
  const messages = m.mqtt_messages ? el("div", { id: "mqtt-messages" }, el("h2", {}, "Last MQTT messages"),
    el("div", { class: "table-wrap" }, el("table", {}, el("tbody", {}, m.mqtt_messages.slice().reverse().map((x) =>
      el("tr", {}, el("td", {}, new Date(x.at_ms).toISOString()), el("td", {}, x.topic),
        el("td", { class: x.outcome.startsWith("refused") ? "lv-error" : "" }, x.outcome), el("td", {}, el("code", {}, x.payload)))))))) : null;
  // How fast it answers (Modbus: median and 1 in 100 of its last 200 answers), and what a SunSpec device said it is.
  const a = m.answer_ms;
  const slow = a && a.p99 > a.timeout / 2;
  const answers = a ? el("p", { id: "answer-times", class: slow ? "lv-warning" : "" }, "answers in " + a.p50 +
    " ms (median), " + a.p99 + " ms (1 in 100), of a " + a.timeout + " ms timeout" +
    (slow ? ": slow, raise its timeout or look at the wiring" : "")) : null;
  const device = m.device && m.device.sunspec ? el("p", { id: "device", class: "muted" }, m.device.sunspec) : null;
  const out = el("div", { id: "read-result" });
  const readNow = el("button", { class: "primary", id: "read-now", onclick: async () => {
    if (needsPassword()) return;
    readNow.disabled = true;
    try {
      const r = await api("/api/meters/" + encodeURIComponent(name) + "/read", { body: {} });
      out.replaceChildren(el("p", {}, r.ts ? "answered at " + r.ts + " (not queued)" : "no answer"),
        r.problems.map((p) => el("div", { class: "problem" }, p)), valuesTable(r.ts ? { values: r.values } : null));
      document.querySelector("#registers")?.replaceWith(registersTable(r.registers));
    } catch (e) { out.replaceChildren(el("div", { class: "problem" }, e.message)); }
    readNow.disabled = false;
  } }, "Read now");
  // The same parts as a card on the meters page, so that the live updates find them.
  setMain(el("p", {}, el("a", { href: "#/meters" }, "< all meters")),
    el("div", { "data-meter": m.name },
      el("h2", {}, m.name, " ", stateBadge(!m.failing, "answering", "failing")), el("p", { class: "muted" }, m.describe),
      device, answers,
      el("div", { class: "error" }, m.failing && m.last_problem ? el("div", { class: "problem" }, m.last_problem) : null),
      el("p", { class: "stamp" }, m.last ? "read " + m.last.ts : "no reading yet"),
      el("p", { id: "read-errors" }, m.requests_per_poll ? m.requests_per_poll + " request(s) per poll · " : "",
        "read errors in the last hour: ", hour.length ? hour.map(([k, n]) => k + " " + n).join(", ") : "none",
        " (since start: ", errors.length ? errors.map(([k, n]) => k + " " + n).join(", ") : "none", ")"),
      el("div", { class: "row" }, readNow), out, el("div", { class: "vals" }, valuesTable(m.last))),
    messages, m.registers || !m.mqtt_messages ? el("h2", {}, "Registers (last answer)") : null,
    m.registers || !m.mqtt_messages ? registersTable(m.registers) : null);
  follow(m.name);
}

// ------------------------------------------------------------------ buses

async function buses() {
  const d = await api("/api/buses");
  setMain(el("h2", {}, "Buses"), el("p", { class: "muted" }, "A scan asks each unit id whether a meter answers, and which profile fits it, as 'meter-gateway scan' does."),
    d.buses.length ? d.buses.map((b) => {
      const units = el("input", { value: "1-16", size: 10, "aria-label": "unit ids" });
      const out = el("div", { class: "scan-result" });
      const go = el("button", { class: "primary", onclick: async () => {
        if (needsPassword()) return;
        go.disabled = true;
        out.replaceChildren(el("p", {}, "Scanning " + units.value + (b.pauses_polling ? ": the meters on this line are not read meanwhile..." : "...")));
        try {
          const r = await api("/api/buses/" + encodeURIComponent(b.name) + "/scan", { body: { units: units.value } });
          out.replaceChildren(el("p", {}, r.hits.length + " unit(s) answered of " + r.units + " in " + r.took_s + " s" +
            (r.paused_polling ? "; polling of this line was paused and is resumed" : "")), el("pre", {}, r.text));
        } catch (e) { out.replaceChildren(el("div", { class: "problem" }, e.message)); }
        go.disabled = false;
      } }, "Scan");
      return el("div", { class: "card", "data-bus": b.name }, el("h3", {}, b.name + " (" + b.type + ")"),
        el("div", { class: "muted" }, b.where), el("div", {}, "meters: " + (b.meters.join(", ") || "none")),
        b.pauses_polling ? el("div", { class: "muted" }, "One conversation at a time on this line: a scan pauses its meters' polling.") : null,
        el("div", { class: "row" }, "unit ids ", units, go), out);
    }) : el("p", { class: "muted" }, "no Modbus bus in the configuration"));
}

// ------------------------------------------------------------------ configuration

async function config() {
  const c = await api("/api/config");
  const area = el("textarea", { id: "config-text", spellcheck: "false" }, c.text);
  const result = el("div", { id: "config-result" });
  const show = (ok, lines, okText) => result.replaceChildren(ok ? el("p", { class: "ok-line" }, okText) :
    el("div", {}, lines.map((p) => el("div", { class: "problem" }, p))));
  const check = el("button", { id: "check", onclick: async () => {
    if (needsPassword()) return;
    const r = await api("/api/config/check", { body: { text: area.value } });
    show(r.ok, r.problems, "No problem found: it can be applied.");
  } }, "Check");
  const apply = el("button", { class: "primary", id: "apply", onclick: async () => {
    if (needsPassword()) return;
    apply.disabled = true;
    result.replaceChildren(el("p", {}, "Applying: the gateway runs with it, and keeps it only if it comes up healthy (a few seconds)..."));
    try {
      const r = await api("/api/config/apply", { body: { text: area.value } });
      show(r.result === "applied" || r.result === "unchanged", r.problems, r.result === "applied" ? "Applied: the gateway runs with it." : "Unchanged.");
      if (r.result !== "applied" && r.result !== "unchanged") result.prepend(el("p", {}, "Result: " + r.result + " (nothing changed)"));
    } catch (e) { show(false, [e.message]); }
    apply.disabled = false;
  } }, "Apply");
  setMain(el("h2", {}, "Configuration"),
    el("p", { class: "muted" }, "Running: " + c.path + (c.remote ? " (applied remotely or from this page; the technician's file is " + c.local_path + ")" : "") +
      ". Secrets are shown as ********: leave them so to keep them."),
    area, el("div", { class: "row" }, check, apply), result);
}

// ------------------------------------------------------------------ platforms

async function platforms() {
  const d = await api("/api/platforms");
  const dl = await api("/api/deadletters");
  const blocks = d.sinks.map((s) => {
    const verifyOut = el("pre", { class: "verify", hidden: true });
    return el("div", { class: "card", "data-sink": s.name },
      el("h3", {}, s.name + " (" + s.type + ")", stateBadge(!s.failing, "delivering", "failing")),
      s.failing && s.last_error ? el("div", { class: "problem" }, s.last_error) : null,
      el("div", {}, "delivered " + s.delivered + ", retried " + s.retried + ", dead letters " + s.dead_letters + ", waiting " + s.depth),
      el("div", { class: "row" }, el("button", { onclick: async (ev) => {
        if (needsPassword()) return;
        ev.target.disabled = true; verifyOut.hidden = false; verifyOut.textContent = "asking the platform...";
        try { const r = await api("/api/platforms/" + encodeURIComponent(s.name) + "/verify", { body: {} }); verifyOut.textContent = r.lines.join("\n"); }
        catch (e) { verifyOut.textContent = e.message; }
        ev.target.disabled = false;
      } }, "Verify")), verifyOut,
      el("details", {}, el("summary", {}, "Last packets sent (" + s.last_sent.length + ")"),
        s.last_sent.map((p) => el("div", {}, el("div", { class: "muted" }, p.stream + " · " + (p.at_ms ? ago(p.at_ms) : "")), el("pre", {}, p.packet || "-")))));
  });
  const rows = dl.dead_letters.map((x) => el("tr", {}, el("td", {}, el("input", { type: "checkbox", value: x.id })), el("td", {}, "#" + x.id),
    el("td", {}, x.sink), el("td", {}, x.meter), el("td", {}, x.ts), el("td", {}, x.state), el("td", {}, x.reason)));
  const table = el("table", { id: "dead-letters" }, el("tbody", {}, rows));
  const msg = el("p", {});
  const chosen = () => Array.from(table.querySelectorAll("input:checked")).map((i) => Number(i.value));
  const act = (action) => async () => {
    if (needsPassword()) return;
    const ids = chosen();
    if (!ids.length) { msg.textContent = "choose dead letters first"; return; }
    if (action === "purge" && !confirm("Delete " + ids.length + " reading(s) for good?")) return;
    try { const r = await api("/api/deadletters/" + action, { body: { ids } }); msg.textContent = r.count + " " + (action === "retry" ? "marked for retry" : "purged"); platforms(); }
    catch (e) { msg.textContent = e.message; }
  };
  setMain(el("h2", {}, "Platforms"), el("div", { class: "cards" }, blocks),
    el("h2", {}, "Dead letters (" + dl.dead_letters.length + ")"),
    dl.dead_letters.length ? el("div", {}, el("div", { class: "table-wrap" }, table),
      el("div", { class: "row" }, el("button", { onclick: act("retry") }, "Retry chosen"), el("button", { onclick: act("purge") }, "Purge chosen")), msg)
      : el("p", { class: "muted" }, "none"));
}

// ------------------------------------------------------------------ logs

async function logs() {
  let after = 0;
  const box = el("div", { class: "logs", id: "log-lines" });
  const level = el("select", { id: "log-level" }, ["debug", "info", "warning", "error"].map((l) => el("option", { value: l, selected: l === "info" }, l)));
  const component = el("input", { id: "log-component", placeholder: "component, e.g. gateway.modbus", size: 22 });
  const reload = () => { after = 0; box.replaceChildren(); pull(); };
  level.addEventListener("change", reload);
  component.addEventListener("change", reload);
  async function pull() {
    const q = new URLSearchParams({ after: String(after), level: level.value, component: component.value });
    const d = await api("/api/logs?" + q);
    const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 10;
    for (const ln of d.lines) {
      after = Math.max(after, ln.seq);
      box.append(el("div", { class: "lv-" + ln.level }, ln.ts + " " + ln.level + " " + ln.component + ": " + ln.event + " " + ln.fields));
    }
    while (box.childElementCount > 2000) box.firstChild.remove();
    if (atEnd) box.scrollTop = box.scrollHeight;
  }
  setMain(el("h2", {}, "Logs"), el("div", { class: "row" }, "level ", level, component,
    el("a", { href: "/api/logs/download" }, "download"), el("span", { class: "muted" }, "following")), box);
  await pull();
  if (!signInShown) following = setInterval(() => pull().catch(() => {}), 2000);
}

// ------------------------------------------------------------------ routing

async function route() {
  stopStreams();
  signInShown = false;
  banner("");
  const hash = location.hash || "#/";
  const [, tab, arg] = hash.match(/^#\/([a-z]*)\/?(.*)$/) || [];
  document.querySelectorAll("header nav a").forEach((a) => a.classList.toggle("active", a.dataset.tab === (tab === "meter" ? "meters" : tab || "overview")));
  try {
    if (session.needs_sign_in && !session.signed_in) { showSignIn(); return; }
    if (!tab) await overview();
    else if (tab === "meters") await meters();
    else if (tab === "meter") await meter(decodeURIComponent(arg));
    else if (tab === "buses") await buses();
    else if (tab === "config") await config();
    else if (tab === "platforms") await platforms();
    else if (tab === "logs") await logs();
    else setMain(el("p", {}, "no such page"));
  } catch (e) {
    if (e.message !== "sign in") setMain(el("div", { class: "problem" }, e.message));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", async () => {
  try { await loadSession(); } catch (e) { banner("The gateway does not answer: " + e.message, true); return; }
  if (!session.enabled) { setMain(el("p", {}, "The page is off on this gateway.")); return; }
  if (session.remote && !session.password_set) { setMain(el("div", { class: "problem" }, "The page is off: it faces the network and no password is set (monitoring.page.password_file).")); return; }
  if (session.remote && !session.tls) banner("This page travels over plain HTTP: its password can be read on the network. Ask for HTTPS (monitoring.page.cert_file).", true);
  route();
});
