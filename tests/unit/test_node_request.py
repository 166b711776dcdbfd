"""A node decodes each message once and hands every mod the same frozen request.

One node's ClientApp in this process, built as a real node builds it (audit
trail, permit checker, validation, secure aggregation, privacy), receives
the messages of one signed ``describe`` task.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flwr.app import Message

from oncofed.client.access import revoke
from oncofed.governance.audit import AuditTrail
from oncofed.governance.envelope import Authorisation, SignedTask
from oncofed.governance.keys import Identity
from oncofed.governance.permits import DatasetGrant, Permit, Purpose, utcnow
from oncofed.kernel.flower import (
    attach_authorisation,
    install_process_identity,
    node_context,
    params_content,
    reply_error,
    stamp,
)
from oncofed.kernel.schema import ColumnSpec
from oncofed.node.app import build_client_app
from oncofed.node.config import DatasetConfig, GovernanceConfig
from oncofed.node.data import Catalogue
from oncofed.node.governance_state import GovernanceState
from oncofed.node.permits import PermitChecker
from oncofed.node.request import NodeRequest, current_request
from oncofed.privacy.ledger import PrivacyLedger
from oncofed.tasks.describe import DescribeParams

RUN = 99


@pytest.fixture
def node(tmp_path: Path) -> Callable[[str, str], Message]:
    """Send the node one message of the signed task (message id, parameters JSON)."""
    install_process_identity()
    rng = np.random.default_rng(3)
    pd.DataFrame({"age": rng.normal(60, 10, 400)}).to_parquet(tmp_path / "d.parquet")
    datasets = {
        "d": DatasetConfig(path=tmp_path / "d.parquet", columns={"age": ColumnSpec(type="float")})
    }
    body, ada = Identity.generate("hdab", "hdab"), Identity.generate("ada", "researcher")
    now = utcnow()
    permit = Permit(
        permit_id="p1",
        issuer=body.card,
        holder="Example Hospital",
        purposes=(Purpose.STATISTICS,),
        persons=(ada.card,),
        datasets=(DatasetGrant(dataset="d"),),
        task_types=("describe",),
        valid_from=now - datetime.timedelta(hours=1),
        valid_until=now + datetime.timedelta(days=1),
    ).sign(body.signing)
    signed = json.dumps({"dataset": "d", "columns": ["age"], "study": "p1"})
    authorisation = Authorisation(
        task=SignedTask.create(ada, "describe", signed, "p1"),
        permit=permit,
        revocations=(revoke(body, tmp_path),),
    ).model_dump_json()
    checker = PermitChecker(
        "n1",
        GovernanceConfig(trusted_bodies={"hdab": body.card.signing_key}),
        datasets,
        GovernanceState.at(tmp_path / "state"),
    )
    catalogue = Catalogue("n1", datasets, ledger=PrivacyLedger.at(tmp_path / "state", "n1"))
    audit = AuditTrail.open_sqlite(tmp_path / "state" / "audit.sqlite", body.signing)
    app = build_client_app(lambda _c: catalogue, audit, None, checker)

    def send(message_id: str, params: str) -> Message:
        message = Message(params_content(params, participants=3), 7, "query.describe")
        stamp(message, run_id=RUN, message_id=message_id)
        attach_authorisation(message, authorisation)
        return app(message, node_context(7, RUN, {}))

    return send


def _counting(monkeypatch: pytest.MonkeyPatch, model: type[Any], calls: Counter[str]) -> None:
    original = model.model_validate_json.__func__

    def counted(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
        calls[model.__name__] += 1
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(model, "model_validate_json", classmethod(counted))


def test_each_message_is_decoded_once_and_its_authorisation_once_per_run(
    node: Callable[[str, str], Message], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()
    _counting(monkeypatch, DescribeParams, calls)
    _counting(monkeypatch, Authorisation, calls)
    params = DescribeParams(dataset="d", columns=("age",), study="p1").model_dump_json()
    for i in range(3):
        reply = node(f"m{i}", params)
        assert not reply.has_error(), reply_error(reply).one_line()
    # Three messages: three decodes of their parameters, one of the signed task's (kept
    # per signature), one of the authorisation (kept per run). It was five per message.
    assert calls == Counter({"DescribeParams": 4, "Authorisation": 1})


def test_every_mod_and_the_handler_read_the_one_request_the_node_decoded(
    node: Callable[[str, str], Message], monkeypatch: pytest.MonkeyPatch
) -> None:
    import oncofed.node.app as app
    import oncofed.node.mods as mods
    import oncofed.node.secure as secure

    seen: list[NodeRequest] = []

    def spying(real: Callable[[], NodeRequest]) -> Callable[[], NodeRequest]:
        def spy() -> NodeRequest:
            seen.append(real())
            return seen[-1]

        return spy

    for module in (app, mods, secure):
        monkeypatch.setattr(module, "current_request", spying(current_request))
    params = DescribeParams(dataset="d", columns=("age",), study="p1").model_dump_json()
    assert not node("m1", params).has_error()
    # validation, secure aggregation, privacy and the handler
    assert len(seen) == 4 and all(request is seen[0] for request in seen)
    request = seen[0]
    assert request.grant is not None and request.grant.task.researcher == "ada"
    with pytest.raises(AttributeError):
        request.params = request.params  # type: ignore[misc]
    with pytest.raises(RuntimeError, match="request mod"):
        current_request()  # outside a message there is none


def test_a_message_the_signature_does_not_cover_is_refused_once_decoded(
    node: Callable[[str, str], Message],
) -> None:
    altered = DescribeParams(dataset="d", columns=("age",), study="p1", min_nodes=2)
    reply = node("m1", altered.model_dump_json())
    assert reply.has_error()
    assert reply_error(reply).rule == "task.altered"
