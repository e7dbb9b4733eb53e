"""spotpool.simulator: an offline Tencent Cloud CVM endpoint with a spot market model.

It speaks the real signed CVM API (2017-03-12) well enough for Tencent's official SDK, STS
(2018-08-13: GetCallerIdentity, AssumeRole, AssumeRoleWithWebIdentity with temporary credentials
that expire), the CVM metadata service's role path, with accounts kept apart, and adds an unsigned
control API under `/_sim/` to inspect state and script reclaims, market changes and faults. The
operator's demos and tests use it as their default cloud.
"""

from spotpool.simulator.config import SimulatorConfig
from spotpool.simulator.server import RunningSimulator, Simulator, run_simulator, serve

__all__ = ["RunningSimulator", "Simulator", "SimulatorConfig", "run_simulator", "serve"]
