"""``GET /v1/models``: the model store's entries, the served restoration model and detector."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from modelstore.store import list_entries
from service.api.deps import AUTH, StateDep
from service.schemas import ModelInfo, ModelsResponse

router = APIRouter(tags=["models"], dependencies=AUTH)


@router.get("/v1/models", summary="Model store entries", response_model=ModelsResponse)
async def models(state: StateDep) -> ModelsResponse:
    detector = await state.current_detector()
    detector_ref = f"{detector.manifest.name}/{detector.manifest.version}" if detector else None
    serving = {state.model.ref, detector_ref}
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
        models=infos,
    )
