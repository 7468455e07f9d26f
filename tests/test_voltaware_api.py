"""Voltaware's HTTP API against its emulator: tokens, refresh, expiry, 403 before registration, metadata PUT."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.platforms.voltaware.api import ApiError, VoltawareClient
from gateway.platforms.voltaware.config import VoltawareApi
from gateway.quantities import Quantity as Q
from gateway.reading import Reading
from tests.helpers.mosquitto import Mosquitto
from tests.helpers.rig import Rig, until
from tests.helpers.voltaware_api_emulator import Registrar, VoltawareApiEmulator

BASE_MS = 1_795_000_000_000


@pytest.fixture
def api(tmp_path: Path) -> Iterator[VoltawareApiEmulator]:
    emu = VoltawareApiEmulator(tmp_path / "api-certs").start()
    yield emu
    emu.stop()


def client_for(api: VoltawareApiEmulator, secret: str = "api-s3cret") -> VoltawareClient:
    return VoltawareClient(VoltawareApi(url=api.url, client_id="gw-client", client_secret=SecretStr(secret),
                                        ca_file=api.ca_file))


async def test_a_token_is_reused_refreshed_when_expired_and_retaken_when_refresh_fails(
    api: VoltawareApiEmulator,
) -> None:
    api.register("d1")
    c = client_for(api)
    for _ in range(3):
        status, body = await c.sensor("d1")
        assert status == 200 and body["first_event"]
    assert api.count("POST", "/auth/token", 200) == 1  # reused, not one per request
    api.expire_all_tokens()  # the server says 401: the client renews by refresh and tries again
    status, _ = await c.sensor("d1")
    assert status == 200 and c.tokens_refreshed == 1
    api.refresh_tokens.clear()  # refresh refused: a new token from the client credentials
    api.expire_all_tokens()
    status, _ = await c.sensor("d1")
    assert status == 200 and c.tokens_taken == 2
    await c.aclose()


async def test_wrong_client_credentials_are_a_clear_error_without_the_secret(api: VoltawareApiEmulator) -> None:
    c = client_for(api, "not-the-secret")
    with pytest.raises(ApiError) as e:
        await c.sensor("d1")
    assert "HTTP 401" in str(e.value) and "not-the-secret" not in str(e.value)
    await c.aclose()


async def test_metadata_of_a_new_device_needs_a_token_taken_after_its_first_event(api: VoltawareApiEmulator) -> None:
    c = client_for(api)
    await c.token()
    api.register("d1")  # the device's first event arrives after the token was issued
    geo = {"latitude": 51.5, "longitude": -0.1}
    assert await c.put_metadata("d1", "geolocation", geo) == 403
    assert await c.put_metadata("d1", "geolocation", geo, fresh=True) == 204
    assert api.metadata[("d1", "geolocation")] == geo
    await c.aclose()


# ---------------------------------------------------------------- provisioning through the sink

META = """\
        metadata:
          property: {{property_type: HOME, home_type: FLAT, home_usage_type: PRIMARY, home_size: 49.8,
                      bedroom_amount: {bedrooms}, power_generator_source: NONE, people_amount: 2,
                      people_amount_in_day_time: 0, people: [{{age_range: ADULT, amount: 2}}]}}
          appliances: [{{key: KETTLE, amount: 1}}, {{key: FRIDGE, amount: 1, type: FRIDGE_AND_FREEZER}}]
          geolocation: {{latitude: 53.35, longitude: -6.26}}
"""


def config_text(broker: Mosquitto, api: VoltawareApiEmulator, state: Path, bedrooms: int = 1) -> str:
    return f"""\
state_dir: {state}
meters:
  - {{name: main, type: simulated, interval: 10s}}
sinks:
  - name: voltaware
    type: voltaware
{broker.sink_lines()}    client_id: test-gateway
    backoff_base: 50ms
    backoff_cap: 500ms
    api: {{url: "{api.url}", client_id: gw-client, client_secret: api-s3cret, ca_file: {api.ca_file},
           retry_base: 200ms, retry_cap: 1s}}
    devices:
      - meter: main
        device_id: dev-9
{META.format(bedrooms=bedrooms)}"""


@pytest.fixture
async def rigs(tmp_path: Path) -> AsyncIterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for r in made:
        await r.stop()


async def run_until_provisioned(text: str, tmp_path: Path, api: VoltawareApiEmulator, rigs: list[Rig],
                                ts: int) -> Rig:
    rig = await Rig(text, tmp_path, "voltaware").start()
    rigs.append(rig)
    await rig.queue.append([Reading("main", ts, {Q.POWER_ACTIVE_TOTAL: 1500.0})])
    return rig


async def test_metadata_is_sent_after_the_first_event_and_only_again_when_it_changes(
    broker: Mosquitto, api: VoltawareApiEmulator, tmp_path: Path, rigs: list[Rig]
) -> None:
    reg = Registrar(broker, api, delay=0.6)  # the platform is slow to register: 403s first
    text = config_text(broker, api, tmp_path)
    rig = await run_until_provisioned(text, tmp_path, api, rigs, BASE_MS)
    await until(lambda: ("dev-9", "geolocation") in api.metadata, within=20)
    assert api.metadata[("dev-9", "property")]["bedroom_amount"] == 1
    assert api.metadata[("dev-9", "appliances")] == {
        "appliances": [{"key": "KETTLE", "amount": 1}, {"key": "FRIDGE", "amount": 1, "type": "FRIDGE_AND_FREEZER"}],
        "version": "1.0",
    }
    assert api.count("PUT", "/sensors/dev-9/metadata/property", 403) >= 1
    # The state file is written once the last PUT is answered: a moment after the emulator saw it.
    await until(lambda: (tmp_path / "voltaware-voltaware.json").exists())
    await rig.stop()
    rigs.clear()

    # Same configuration after a restart: nothing sent again.
    puts = api.count("PUT", "/sensors/")
    rig = await run_until_provisioned(text, tmp_path, api, rigs, BASE_MS + 10_000)
    await until(lambda: len(reg.received()) == 2)
    await asyncio.sleep(0.5)
    assert api.count("PUT", "/sensors/") == puts
    await rig.stop()
    rigs.clear()

    # Changed metadata: sent again after the next event.
    rig = await run_until_provisioned(config_text(broker, api, tmp_path, bedrooms=3), tmp_path, api, rigs,
                                      BASE_MS + 20_000)
    await until(lambda: api.metadata[("dev-9", "property")]["bedroom_amount"] == 3, within=20)
    reg.close()
