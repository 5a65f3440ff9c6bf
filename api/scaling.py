"""GET /scaling: per queue, the load and the workers it wants: what KEDA's metrics-api scaler or an HPA
on external metrics reads (runner.services.scaling)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from api.state import runner_state
from runner.services.scaling import scaling_figures

blueprint = Blueprint("scaling", __name__)


@blueprint.get("/scaling")
def get_scaling() -> dict[str, Any]:
    state = runner_state()
    return {"queues": [load.to_dict() for load in scaling_figures(state.backends, state.registry)]}
