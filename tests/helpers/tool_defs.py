"""Tool definitions the tool tests share: two functions, and a plan over them."""

from __future__ import annotations

from typing import Any

from server.prompting.tools import ToolPlan, plan_tools

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER_PARAMS},
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def plan(choice: Any = None, *, style: Any = "generic", parallel: bool | None = None) -> ToolPlan:
    p = plan_tools([WEATHER, TIME], choice, parallel, style)
    assert p is not None
    return p


ALLOWED = {"get_weather", "get_time"}
