"""Binance-Spot-compatible REST facade (`/api/v3`): a translation layer over the native
API's validation, enqueue script, engine and replies (docs/binance-compat.md)."""

from cryptex_api.binance.routes import Facade, add_routes

__all__ = ["Facade", "add_routes"]
