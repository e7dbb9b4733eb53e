"""What a test starts from, defined once: a SpotComputeEnvironment spec and a simulator config.

Each test states only what it needs different (`pool_spec(expectedCount=0)`,
`simulator_config(lifecycle={"boot_delay_seconds": 0.5})`); the harnesses' presets
(`tests.support.inprocess`, `tests.support.processes`) are built on these.
"""

from __future__ import annotations

from typing import Any

from spotpool.simulator import SimulatorConfig

REGION = "ap-guangzhou"
ZONES = ("ap-guangzhou-3", "ap-guangzhou-4")
TYPES = ("S5.MEDIUM4", "SA2.MEDIUM4")
IMAGE_ID = "img-pmqg1cw7"
MAX_PRICE = "0.0923"
CREDENTIALS_SECRET = "tencentcloud-credentials"


def pool_spec(**changes: Any) -> dict[str, Any]:
    """A valid spec, camelCase as the API server hands it over, with `changes` applied; a change to
    None leaves the field out (`credentialsSecretRef=None` for a spec that names `credentials`)."""
    spec: dict[str, Any] = {
        "expectedCount": 3,
        "maxPrice": MAX_PRICE,
        "region": REGION,
        "zones": list(ZONES),
        "instanceTypes": list(TYPES),
        "imageId": IMAGE_ID,
        "credentialsSecretRef": {"name": CREDENTIALS_SECRET},
        **changes,
    }
    return {key: value for key, value in spec.items() if value is not None}


def simulator_config(*, seed: int = 7, **sections: Any) -> SimulatorConfig:
    """The simulator's default market with a fixed seed and `sections` (`lifecycle={...}`,
    `api={...}`, `market={...}`, `credentials=[...]`, ...) deep-merged in."""
    return SimulatorConfig.default().with_overrides({"seed": seed, **sections})
