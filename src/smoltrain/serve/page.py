"""PLACEHOLDER owned by the page helper (branch `page`), who replaces this file with the playground page.

The server includes ``page_router(run)``; until the page exists it adds no routes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

if TYPE_CHECKING:
    from smoltrain.serve.run import ServedRun


def page_router(run: ServedRun) -> APIRouter:
    return APIRouter()
