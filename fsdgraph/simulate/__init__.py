"""A calibrated discrete-event simulator of serverless inference (docs/simulator.md).

* :func:`predict_plan` / :func:`predict`: a compiled plan, or a Graph Challenge RadiX-Net by its
  size, simulated on a profile (:class:`Prediction`: wall time, cost, where the time goes);
* :func:`load_profile`: the built-in profiles (``aws``: fsdgraph's protocol on AWS; ``paper``:
  the FSD-Inference paper's protocol, fitted on its 35 runs; ``local``: this machine's local
  backend) or a user's TOML file merged over them;
* :func:`calibrate`: the fit against the paper's measured runs and its errors on left-out runs;
* :func:`measure_kernel_costs`: the layer kernel's cost per multiply-add on this machine.

Modules: :mod:`~fsdgraph.simulate.profile`, :mod:`~fsdgraph.simulate.workload`,
:mod:`~fsdgraph.simulate.protocols`, :mod:`~fsdgraph.simulate.kernelcost`,
:mod:`~fsdgraph.simulate.engine` (the event loop), :mod:`~fsdgraph.simulate.predict`,
:mod:`~fsdgraph.simulate.calibrate`, :mod:`~fsdgraph.simulate.cli`.
"""

from __future__ import annotations

from fsdgraph.simulate.calibrate import Calibration, calibrate
from fsdgraph.simulate.engine import Engine, Timeline, expected
from fsdgraph.simulate.kernelcost import measure_kernel_costs
from fsdgraph.simulate.predict import Prediction, predict, predict_plan
from fsdgraph.simulate.profile import Profile, load_profile
from fsdgraph.simulate.workload import Workload

__all__ = ["Calibration", "Engine", "Prediction", "Profile", "Timeline", "Workload", "calibrate",
           "expected", "load_profile", "measure_kernel_costs", "predict", "predict_plan"]
