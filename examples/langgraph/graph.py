"""The example's graph: a support-ticket pipeline of plain functions (no
model needed). `intake` cleans the text, `classify` decides how urgent it
is, then a conditional edge sends urgent tickets to `page_oncall` and the
rest to `reply`; both end the graph. `trail` collects the nodes visited
through a reducer (`operator.add`), so the state merge is exercised too."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph


class Ticket(TypedDict, total=False):
    ticket: str
    text: str
    words: int
    urgent: bool
    answer: str
    trail: Annotated[list[str], operator.add]


def intake(state: Ticket) -> dict[str, Any]:
    text = " ".join(state["text"].split()).strip()
    return {"text": text, "words": len(text.split()), "trail": ["intake"]}


def classify(state: Ticket) -> dict[str, Any]:
    urgent = any(word in state["text"].lower() for word in ("down", "outage", "urgent"))
    return {"urgent": urgent, "trail": ["classify"]}


def route(state: Ticket) -> str:
    return "page_oncall" if state["urgent"] else "reply"


def page_oncall(state: Ticket) -> dict[str, Any]:
    return {"answer": f"paged on-call for {state['ticket']}", "trail": ["page_oncall"]}


def reply(state: Ticket) -> dict[str, Any]:
    return {"answer": f"replied to {state['ticket']} ({state['words']} words)", "trail": ["reply"]}


def build() -> StateGraph[Any]:
    graph: StateGraph[Any] = StateGraph(Ticket)
    graph.add_node("intake", intake)
    graph.add_node("classify", classify)
    graph.add_node("page_oncall", page_oncall)
    graph.add_node("reply", reply)
    graph.add_edge(START, "intake")
    graph.add_edge("intake", "classify")
    graph.add_conditional_edges("classify", route, ["page_oncall", "reply"])
    graph.add_edge("page_oncall", END)
    graph.add_edge("reply", END)
    return graph
