"""Admin routes (bearer token, limited per client address): create users, deposit, withdraw.

Invariants: every admin call passes `Authenticator.check_admin` before any work; a
transfer moves funds through the ledger script only (atomic, idempotent by txId): a
repeated txId with the same transfer answers `duplicate: true` and moves nothing, one
with a different transfer is 409 CONFLICT.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

from aiohttp import web

from cryptex_api.responses import json_response
from cryptex_api.transfers import validate_transfer
from cryptex_common import keys
from cryptex_common.errors import CryptexError, ErrorCode

if TYPE_CHECKING:
    from cryptex_api.app import Api


class AdminHandlers:
    """The admin handlers; one per `Api`."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def create_user(self, request: web.Request) -> web.Response:
        """A new user id and a fresh API key and secret.

        The user hash (`user:<id>`, holding the key and secret) is written first, then the
        key's mapping (`apikey:<key>` -> id): two writes, not one transaction, because on
        a Redis Cluster the two keys live in different slots (decision 0013), and a MULTI
        may not cross slots. The order makes every state safe: a key resolves only once
        its user exists, so no request can authenticate as a half-created user; a crash
        between the two leaves a user no key reaches (never answered to anyone, so never
        used: harmless). The same two writes run on a single Redis."""
        api = self.api
        api.auth.check_admin(request)
        user_id = str(await api.redis.incr(keys.USER_ID_COUNTER))
        api_key, secret = secrets.token_hex(16), secrets.token_hex(32)
        await api.redis.hset(keys.user_key(user_id), mapping={"apiKey": api_key, "apiSecret": secret,
                                                              "createdMs": int(time.time() * 1000)})
        await api.redis.set(keys.api_key_key(api_key), user_id)
        return json_response({"userId": user_id, "apiKey": api_key, "apiSecret": secret}, 201)

    async def deposit(self, request: web.Request) -> web.Response:
        return await self.move_funds(request, "deposit")

    async def withdraw(self, request: web.Request) -> web.Response:
        return await self.move_funds(request, "withdraw")

    async def move_funds(self, request: web.Request, kind: str) -> web.Response:
        """A deposit or withdrawal (`kind`) for an existing user."""
        api = self.api
        api.auth.check_admin(request)
        body = api.read_json(await api.read_body(request))
        move = validate_transfer(body, api.asset_decimals)
        user_id, asset, tx_id, units = move.user_id, move.asset, move.tx_id, move.units
        if not await api.redis.exists(keys.user_key(user_id)):
            raise CryptexError(ErrorCode.NOT_FOUND, f"user {user_id} not found", "userId")
        record = {"txId": tx_id, "kind": kind, "userId": user_id, "asset": asset, "units": str(units)}
        status, stored = await api.ledger.move_funds(kind=kind, user_id=user_id, asset=asset,
                                                    units=units, tx_id=tx_id, record=record)
        if status == "insufficient":
            raise CryptexError(ErrorCode.INSUFFICIENT_FUNDS, f"insufficient {asset} available", "amount")
        if status == "dup":
            if stored != record:
                raise CryptexError(ErrorCode.CONFLICT, f"txId {tx_id} was used for a different transfer", "txId")
            return json_response({**body, "duplicate": True})
        return json_response({**body, "duplicate": False})
