"""Multi-stage jobs that are more than one network over tiles: old photos, text removal,
face restoration (detect, align, restore, paste back) and text-prompted restoration. Each
exposes `run(step, image, ctx, report) -> Image`."""

from __future__ import annotations

import importlib

PIPELINES = {
    "old-photo": "restorer.pipelines.old_photo",
    "remove-text": "restorer.pipelines.text_removal",
    "faces": "restorer.pipelines.face_restore",
}


def run_pipeline(step, image, ctx, report):
    module = importlib.import_module(PIPELINES[step.task])
    return module.run(step, image, ctx, report)
