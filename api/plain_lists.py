"""The hottest request, a plain listing, answered without FastAPI's routing.

Frontends list a user's tasks on every page view, mostly with nothing but paging and a
sort: ``GET /api/{user_id}/tasks?limit=100``. FastAPI spends more on such a request
than the listing does (issue 14's profile, a kept page on SQLite: solving the route's
twenty query parameters and dependencies took 23% of the process's time, routing and
its exception layers 15%, the listing itself 9%). This ASGI layer answers exactly that
request itself, the same way the route does (``Services.list_page``, the same
``TaskFilter``, the same body and headers), and hands everything else on to FastAPI
untouched: another parameter or value, a first-seen token (whose keys may have to be
fetched), another user's tasks (an auditor's read is logged by the route), the read
tables not served, any error. So the route stays the one place that validates,
refuses and explains; this is a shortcut for requests it would answer 200.

A dashboard's summaries, ``/stats`` (with at most ``tz``) and ``/tags``, are answered
here too when they are kept and still hold; anything else about them (a first read, a
change since) goes to their routes, which read and keep them.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from dataclasses import replace
from typing import get_args
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api.known_caller import own_request
from api.routes import known_zone, list_response, summary_response
from api.services import Services
from read_side.queries import Order, SortKey, Status, TaskFilter
from write_side import USER_ID_PATTERN
from write_side.domain import PRIORITIES, clean_tags
from write_side.errors import InvalidTask

_PATH = re.compile(r"/api/([^/]+)/(tasks|stats|tags)")
_USER_ID = re.compile(USER_ID_PATTERN)
# The route's own bounds (api/routes.py list_tasks), written as the only spellings
# taken here: any other (a sign, a space, leading zeros) goes to the route.
_LIMIT = re.compile(r"[1-9][0-9]{0,2}")
_OFFSET = re.compile(r"0|[1-9][0-9]{0,9}")
MAX_LIMIT, MAX_OFFSET = 500, 1_000_000_000
_STATUSES = frozenset(get_args(Status))
_SORTS = frozenset(get_args(SortKey))
_ORDERS = frozenset(get_args(Order))
_PRIORITIES = frozenset(PRIORITIES)
# has_due, overdue: absent, or exactly "true" or "false" (the route reads other spellings too).
_INVALID = object()
_BOOLEANS: dict[str | None, object] = {None: None, "true": True, "false": False}


def plain_listing(query_string: bytes) -> TaskFilter | None:
    """The listing asked for, when the query holds only paging, ``status``, ``sort``,
    ``order``, ``has_due`` and ``overdue`` (each once), ``priority`` and ``tag``
    (repeatable), in their canonical spellings (None: the route's to read). An
    ``overdue`` listing is still to be given its moment."""
    split = _split(query_string)
    if split is None:
        return None
    asked, priorities, tags = split
    limit, offset = asked.pop("limit", "100"), asked.pop("offset", "0")
    status = asked.pop("status", "all")
    sort, order = asked.pop("sort", "created_at"), asked.pop("order", "desc")
    has_due = _BOOLEANS.get(asked.pop("has_due", None), _INVALID)
    overdue = _BOOLEANS.get(asked.pop("overdue", None), _INVALID)
    plain = (
        not asked
        and _LIMIT.fullmatch(limit) is not None
        and _OFFSET.fullmatch(offset) is not None
        and int(limit) <= MAX_LIMIT
        and int(offset) <= MAX_OFFSET
        and has_due is not _INVALID
        and overdue is not _INVALID
        and status in _STATUSES
        and sort in _SORTS
        and order in _ORDERS
        and _PRIORITIES.issuperset(priorities)
    )
    if not plain:
        return None
    try:
        labels = clean_tags(tags)  # as the route reads them
    except InvalidTask:
        return None
    return TaskFilter(
        status=status,  # type: ignore[arg-type]  # checked against the Literal's values
        sort=sort,  # type: ignore[arg-type]
        order=order,  # type: ignore[arg-type]
        limit=int(limit),
        offset=int(offset),
        priorities=tuple(dict.fromkeys(priorities)),
        tags=labels,
        has_due=has_due,  # type: ignore[arg-type]  # a bool or None, from _BOOLEANS
        overdue=overdue,  # type: ignore[arg-type]
    )


def _split(query_string: bytes) -> tuple[dict[str, str], list[str], list[str]] | None:
    """The parameters given once, and the priorities and tags (None: a parameter
    given twice that may not be, or a query that is not ASCII)."""
    asked: dict[str, str] = {}
    repeated: dict[str, list[str]] = {"priority": [], "tag": []}
    try:
        pairs = parse_qsl(query_string.decode("ascii"), keep_blank_values=True)
    except UnicodeDecodeError:
        return None
    for name, value in pairs:
        if name in repeated:
            repeated[name].append(value)
        elif name in asked:
            return None
        else:
            asked[name] = value
    return asked, repeated["priority"], repeated["tag"]


def plain_summary(what: str, query_string: bytes) -> tuple[Hashable, bool] | None:
    """What a ``stats`` or ``tags`` request asks, as its route files the answer, and
    whether it is judged at a moment (None: the route's to read)."""
    split = _split(query_string)
    if split is None or split[1] or split[2]:
        return None
    asked = split[0]
    if what == "tags":
        return ("tags", False) if not asked else None
    zone = asked.pop("tz", "UTC")
    if asked or not known_zone(zone):
        return None
    return ("stats", zone), True


class PlainListings:
    """ASGI: plain listings by their own user answered here, and their kept summaries;
    the rest passed on."""

    def __init__(self, app: ASGIApp, services: Services, routes: Mapping[str, BaseRoute]) -> None:
        self.app = app
        self.services = services
        # The routes it stands in for, by the path's last part: written into the scope,
        # as routing would, so that the access log and the metrics name the template.
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            answer = await self._answer(scope)
            if answer is not None:
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope) -> Response | None:
        matched = _PATH.fullmatch(scope["path"])
        if matched is None or not _USER_ID.fullmatch(user_id := matched.group(1)):
            return None
        what = matched.group(2)
        if what == "tasks":
            spec = plain_listing(scope["query_string"])
            if spec is None or not own_request(self.services, scope, user_id):
                return None
            page = await self._page(user_id, spec)
            if page is None:
                return None
            response = list_response(self.services, *page, spec)
        else:
            summary = plain_summary(what, scope["query_string"])
            if summary is None or not own_request(self.services, scope, user_id):
                return None
            asked, at_moment = summary
            # Judged at the moment the route would judge it at.
            moment = self.services.judged_now() if at_moment else None
            answer = self.services.kept_answer(
                user_id, asked, moment
            ) or await self.services.checked_answer(user_id, asked, moment)
            if answer is None:
                return None  # read, and kept, by the route
            response = summary_response(answer[0])
        scope["route"] = self.routes[what]
        scope["path_params"] = {"user_id": user_id}
        return response

    async def _page(self, user_id: str, spec: TaskFilter) -> tuple[str, int] | None:
        services = self.services
        if spec.overdue is not None:
            # Judged at the moment the route would judge it at.
            spec = replace(spec, now=services.judged_now())
        # From memory on the event loop when it can be told so, else in a route thread.
        page = services.kept_page(user_id, spec) or await services.checked_page(user_id, spec)
        if page is None:
            try:
                page = await run_in_threadpool(services.list_page, user_id, spec)
            except Exception:
                # The route meets the same and answers it (a 503, a problem+json).
                return None
        return page
