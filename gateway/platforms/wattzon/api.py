"""WattzOn Link's REST API, authenticated by the gateway's TLS client certificate (WattzOn signs its CSR).

Every answer is JSON or a :class:`gateway.cloudhttp.CloudError`; nothing of a malformed answer is used. The
document shows the bill list both bare and under ``data``: both are read. Job states are judged by ``finished``
only (WattzOn says its list of status words is open); the few that need a person are named here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from gateway.cloudhttp import CloudError, client, request_json
from gateway.platforms.wattzon.config import WattzonCloud

#: Terminal job states a person must act on (the utility site's credentials or account), with what to do.
NEEDS_PERSON = {
    "credential_error": "the utility site refused the username or password stored in the WattzOn profile: update"
                        " them (WattzOn 3in1 or the profile's sensitive fields)",
    "action_needed": "the utility site wants something done on the account (accept terms, reset a password): log in"
                     " to the utility's site as the customer",
    "incomplete_parameters": "the WattzOn profile lacks the utility site's username or password: set them",
}


def status_word(job_status: object) -> str:
    """``AgentState.credential_error`` -> ``credential_error`` (the document shows both forms)."""
    text = job_status if isinstance(job_status, str) else ""
    return text.rsplit(".", 1)[-1].strip().lower()[:60]


class WattzonApi:
    def __init__(self, cloud: WattzonCloud) -> None:
        self.cloud = cloud
        self.base = cloud.url.rstrip("/") + cloud.base_path.rstrip("/")
        self._client: httpx.AsyncClient | None = None
        #: requests made, for the figures
        self.requests = 0

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = client(self.cloud.ca_file, self.cloud.request_timeout,
                                  cert=(self.cloud.cert_file, self.cloud.key_file))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        self.requests += 1
        status, answer = await request_json(self._http(), method, self.base + path, peer="WattzOn",
                                            what=f"{method} {path}", max_answer=self.cloud.max_answer, **kwargs)
        if status == 401:
            raise CloudError("auth", f"{method} {path}: WattzOn refused the client certificate (401)", 401)
        return answer

    async def echo(self, text: str) -> Any:
        return await self._call("GET", "/echo", params={"string": text})

    async def certificate_info(self) -> Any:
        return await self._call("GET", "/certificates/info")

    async def profile(self, profile_id: int) -> Any:
        return await self._call("GET", f"/profiles/{profile_id}")

    async def start_job(self, profile_id: int, mode: str) -> str:
        answer = await self._call("POST", "/jobs", json={"profile_id": profile_id, "mode": mode,
                                                          "send_notification": False})
        job = answer.get("job_id") if isinstance(answer, dict) else None
        if not isinstance(job, str) or not job or len(job) > 200:
            raise CloudError("bad_answer", "POST /jobs: WattzOn's answer has no job_id")
        return job

    async def job(self, job_id: str) -> tuple[bool, str, str]:
        """(finished, status word, detail)."""
        answer = await self._call("GET", f"/jobs/{quote(job_id, safe='')}")
        if not isinstance(answer, dict) or not isinstance(answer.get("finished"), bool):
            raise CloudError("bad_answer", "GET /jobs/{id}: WattzOn's answer has no finished flag")
        detail = answer.get("detail")
        text = detail[:200] if isinstance(detail, str) else ""
        return answer["finished"], status_word(answer.get("job_status")), text

    async def _data(self, path: str, key: str, what: str) -> list[Any]:
        """A data list, bare or under ``key``; a 404 (nothing extracted yet, as the document answers then) is an
        empty one."""
        try:
            answer = await self._call("GET", path)
        except CloudError as e:
            if e.kind == "not_found":
                return []
            raise
        if isinstance(answer, dict) and isinstance(answer.get(key), list):
            answer = answer[key]
        if not isinstance(answer, list):
            raise CloudError("bad_answer", f"GET {path}: not a list of {what}")
        return answer

    async def bills(self, profile_id: int) -> list[Any]:
        return await self._data(f"/data/bills/{profile_id}", "data", "bills")

    async def intervals(self, profile_id: int) -> list[Any]:
        return await self._data(f"/data/intervals/{profile_id}", "intervals", "interval periods")

    async def month(self, profile_id: int, meter_id: str, month_id: str) -> Any:
        return await self._call("GET", f"/data/intervals/{profile_id}/{quote(meter_id, safe='')}/monthly/"
                                       f"{quote(month_id, safe='')}", params={"format": "json"})
