"""Tile and chunk planning under a memory budget: pure functions of sizes (see `tiles`)."""

from ntkit.schedule.tiles import (DEFAULT_MAX_TILE, TILE_COPIES, BudgetTooSmallError, Tile, TilePlan,
                                  iter_tiles, peak_bytes, plan_tiles)

__all__ = ["DEFAULT_MAX_TILE", "TILE_COPIES", "BudgetTooSmallError", "Tile", "TilePlan", "iter_tiles",
           "peak_bytes", "plan_tiles"]
