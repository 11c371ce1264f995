"""``GET /v1/models``: the model store's entries, the served restoration models and detector."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from modelstore.detector import Detector
from modelstore.store import list_entries
from service.api.deps import AUTH, StateDep
from service.schemas import ModelInfo, ModelsResponse, ServedModel

router = APIRouter(tags=["models"], dependencies=AUTH)


def _ref(detector: Detector | None) -> str | None:
    return f"{detector.manifest.name}/{detector.manifest.version}" if detector else None


@router.get("/v1/models", summary="Model store entries", response_model=ModelsResponse)
async def models(state: StateDep) -> ModelsResponse:
    detector = await state.current_detector()
    detector_ref = _ref(detector)
    served = [
        ServedModel(
            model=s.model.ref,
            default=s is state,
            precision=s.model.precision,
            modes=s.restorer.modes,
            default_mode=s.restorer.default_mode,
            aligned_for=s.aligned_for,
            detector=_ref(await s.task_detector()),
        )
        for s in state.served
    ]
    serving = {detector_ref, *(s.model for s in served)}
    infos = [
        ModelInfo(
            name=e.manifest.name,
            version=e.manifest.version,
            task=e.manifest.task,
            loaded=e.ref in serving,
            description=e.manifest.description,
            tile=e.manifest.tile.model_dump() if e.manifest.tile else None,
            outputs=[o.name for o in e.manifest.outputs],
            metrics=e.manifest.metrics,
        )
        for e in await asyncio.to_thread(list_entries, state.settings.model_store)
    ]
    return ModelsResponse(
        restore=state.model.ref,
        restore_precision=state.model.precision,
        restore_modes=state.restorer.modes,
        default_restore_mode=state.restorer.default_mode,
        restore_tiles=list(state.restorer.tiles),
        restore_tile_overlap=state.restorer.overlap,
        detect=detector_ref,
        served=served,
        models=infos,
    )
