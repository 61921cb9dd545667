"""The web package's one router: ``/v1`` routes for the form (candidate PNGs, answers, rater links)
and the ``/ui`` pages. ``create_app`` includes it with one line."""

from __future__ import annotations

from fastapi import APIRouter

from . import api, pages

router = APIRouter()
router.include_router(api.router)
router.include_router(pages.router)
