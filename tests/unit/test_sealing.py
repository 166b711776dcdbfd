"""Results sealed with HPKE (hybrid post-quantum where a card allows), and what came before.

A coordinator's database keeps results sealed before HPKE, and permits signed
over cards without an ML-KEM key: both must still open and verify.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import ValidationError

from oncofed.governance.keys import Identity, IdentityCard, canonical_json, load_card
from oncofed.governance.permits import DatasetGrant, Permit, Purpose, SignedPermit
from oncofed.governance.sealing import (
    HYBRID_SUITE,
    LEGACY_SCHEME,
    SCHEME,
    X25519_SUITE,
    open_sealed,
    seal,
)
from oncofed.kernel.errors import AccessDenied, PermitRefused

UTC = datetime.UTC
RESULT = b'{"rows": [{"column": "age", "count": 228, "mean": 62.4}]}'

ADA = Identity.generate("ada", "researcher")  # hybrid: X25519 + ML-KEM-768
BODY = Identity.generate("hdab-fi", "hdab")
MALLORY = Identity.generate("mallory", "researcher")
# Made before ML-KEM: the same X25519 key, no ML-KEM key, a card without the field.
OLD_BODY = dataclasses.replace(Identity.generate("hdab-old", "hdab"), mlkem=None)


def _refused(
    sealed: str, reader: Identity, words: str = "", context: str | None = None
) -> AccessDenied:
    with pytest.raises(AccessDenied, match=words) as caught:
        open_sealed(sealed, reader, context=context)
    assert caught.value.rule == "result.sealed"
    assert "only the researcher who submitted the task" in (caught.value.fix or "")
    return caught.value


def test_one_result_opens_for_a_hybrid_and_an_x25519_only_reader_and_states_each_suite() -> None:
    assert OLD_BODY.card.mlkem_key is None and ADA.card.mlkem_key is not None
    sealed = seal(RESULT, (ADA.card, OLD_BODY.card), context="task-1")
    assert b"228" not in sealed.encode()
    box = json.loads(sealed)
    assert box["scheme"] == SCHEME and box["content"] == "AES-256-GCM"
    assert {name: r["suite"] for name, r in box["recipients"].items()} == {
        "ada": HYBRID_SUITE,
        "hdab-old": X25519_SUITE,
    }
    assert open_sealed(sealed, ADA) == RESULT
    assert open_sealed(sealed, OLD_BODY) == RESULT


def test_an_altered_result_context_key_or_suite_is_refused() -> None:
    sealed = seal(RESULT, (ADA.card, BODY.card), context="task-1")

    def altered(change: Callable[[dict[str, Any]], object]) -> str:
        box = json.loads(sealed)
        change(box)
        return json.dumps(box)

    def flip(text: str) -> str:
        raw = bytearray(base64.b64decode(text))
        raw[-1] ^= 1
        return base64.b64encode(bytes(raw)).decode()

    def ciphertext(box: dict[str, Any]) -> None:
        box["ciphertext"] = flip(box["ciphertext"])

    def context(box: dict[str, Any]) -> None:
        box["context"] = "task-2"  # moved onto another task

    def sealed_key(box: dict[str, Any]) -> None:
        box["recipients"]["ada"]["key"] = flip(box["recipients"]["ada"]["key"])

    def downgrade(box: dict[str, Any]) -> None:
        box["recipients"]["ada"]["suite"] = X25519_SUITE

    for change in (ciphertext, context, sealed_key):
        _refused(altered(change), ADA, "altered")
    # Relabelled to the classical suite: a reader whose card has an ML-KEM key refuses it.
    _refused(altered(downgrade), ADA, "downgrade")
    # Moved onto another task's row: the reader asks for the task it submitted.
    assert open_sealed(sealed, ADA, context="task-1") == RESULT
    _refused(sealed, ADA, "another task", context="task-2")
    _refused(altered(lambda box: box["recipients"]["ada"].update(suite="ROT13")), ADA, "suite")
    _refused("not json", ADA, "not a sealed result")
    _refused(altered(lambda box: box.update(scheme="rot13")), ADA, "not sealed to you")


def test_a_third_party_cannot_open_nor_pose_as_a_reader() -> None:
    sealed = seal(RESULT, (ADA.card, BODY.card), context="task-1")
    _refused(sealed, MALLORY, "not sealed to you")
    _refused(sealed, dataclasses.replace(MALLORY, name="ada"), "key does not match")
    # Ada's X25519 key alone does not open what was sealed to her hybrid key.
    _refused(sealed, dataclasses.replace(ADA, mlkem=None), "has none")
    # Nor does someone holding her X25519 key with another ML-KEM key.
    _refused(sealed, dataclasses.replace(ADA, mlkem=MALLORY.mlkem), "key does not match")


def test_readers_are_distinct_cards() -> None:
    impostor = dataclasses.replace(MALLORY, name="ada").card
    with pytest.raises(ValueError, match="two different readers"):
        seal(RESULT, (ADA.card, impostor), context="task-1")
    assert open_sealed(seal(RESULT, (ADA.card, ADA.card), context="t"), ADA) == RESULT


# The scheme results were sealed with before HPKE, as coordinators' databases hold them.
def _old_wrapping_key(shared: bytes, ephemeral: str, recipient: str) -> bytes:
    info = f"oncofed result key|{ephemeral}|{recipient}".encode()
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(shared)


def _old_text(key: X25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes_raw()).decode()


def _old_seal(plaintext: bytes, recipients: dict[str, X25519PublicKey], context: str) -> str:
    content_key = AESGCM.generate_key(256)
    nonce = os.urandom(12)
    wrapped = {}
    for name, public in sorted(recipients.items()):
        ephemeral = X25519PrivateKey.generate()
        ephemeral_text = _old_text(ephemeral.public_key())
        key = _old_wrapping_key(ephemeral.exchange(public), ephemeral_text, _old_text(public))
        key_nonce = os.urandom(12)
        wrapped[name] = {
            "ephemeral": ephemeral_text,
            "nonce": base64.b64encode(key_nonce).decode(),
            "key": base64.b64encode(
                AESGCM(key).encrypt(key_nonce, content_key, context.encode())
            ).decode(),
        }
    ciphertext = AESGCM(content_key).encrypt(nonce, plaintext, context.encode())
    return json.dumps(
        {
            "scheme": "x25519-hkdf-sha256-aes256gcm",
            "context": context,
            "recipients": wrapped,
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(ciphertext).decode(),
        },
        sort_keys=True,
    )


def test_a_result_sealed_before_hpke_still_opens_for_its_readers_only() -> None:
    old_ada = dataclasses.replace(ADA, mlkem=None)  # as ada's identity was before ML-KEM
    readers = {"ada": ADA.encryption.public_key(), "hdab-old": OLD_BODY.encryption.public_key()}
    sealed = _old_seal(RESULT, readers, context="task-0")
    assert json.loads(sealed)["scheme"] == LEGACY_SCHEME
    assert open_sealed(sealed, old_ada) == RESULT
    assert open_sealed(sealed, OLD_BODY) == RESULT
    _refused(sealed, ADA, "downgrade")  # an identity with ML-KEM opens only hybrid entries
    _refused(sealed, dataclasses.replace(MALLORY, name="ada", mlkem=None), "key does not match")
    _refused(sealed, MALLORY, "not sealed to you")
    box = json.loads(sealed)
    box["context"] = "task-9"
    _refused(json.dumps(box), old_ada, "altered")


def _b64_raw(key: Ed25519PrivateKey | X25519PrivateKey) -> str:
    return base64.b64encode(key.private_bytes_raw()).decode()


def test_an_identity_file_without_an_ml_kem_key_loads_and_opens_what_it_can(
    tmp_path: Path,
) -> None:
    made = Identity.generate("ada-2019", "researcher")
    old_file = {
        "name": made.name,
        "role": made.role,
        "signing": _b64_raw(made.signing),
        "encryption": _b64_raw(made.encryption),
    }
    (tmp_path / "identity.json").write_bytes(canonical_json(old_file))
    old = Identity.load(tmp_path)
    assert old.mlkem is None and old.card.mlkem_key is None
    assert old.card.encryption_key == made.card.encryption_key
    assert "mlkem_key" not in old.card.model_dump_json()
    sealed = seal(RESULT, (old.card, BODY.card), context="task-3")
    assert json.loads(sealed)["recipients"]["ada-2019"]["suite"] == X25519_SUITE
    assert open_sealed(sealed, old) == RESULT
    readers = {"ada-2019": old.encryption.public_key()}
    assert open_sealed(_old_seal(RESULT, readers, context="t"), old) == RESULT


def test_a_new_identity_keeps_its_ml_kem_key_across_save_and_load(tmp_path: Path) -> None:
    ADA.save(tmp_path / "ada")
    assert oct((tmp_path / "ada" / "identity.json").stat().st_mode & 0o777) == "0o600"
    loaded = Identity.load(tmp_path / "ada")
    assert loaded.card == ADA.card == load_card(tmp_path / "ada" / "card.json")
    assert open_sealed(seal(RESULT, (ADA.card,), context="t"), loaded) == RESULT
    broken = json.loads((tmp_path / "ada" / "identity.json").read_text())
    broken["mlkem"] = base64.b64encode(b"short").decode()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "identity.json").write_text(json.dumps(broken))
    with pytest.raises(Exception, match="64-byte seed"):
        Identity.load(tmp_path / "bad")


def test_a_card_refuses_a_malformed_ml_kem_key() -> None:
    fields = ADA.card.model_dump()
    for bad in (base64.b64encode(b"\0" * 32).decode(), "not base64!"):
        with pytest.raises(ValidationError, match="mlkem_key"):
            IdentityCard.model_validate({**fields, "mlkem_key": bad})
    # ML-KEM rejects a public key whose coefficients are out of range (FIPS 203 check).
    out_of_range = base64.b64encode(b"\xff" * 1184).decode()
    with pytest.raises(ValidationError, match="mlkem_key"):
        IdentityCard.model_validate({**fields, "mlkem_key": out_of_range})


# A permit an HDAB signed before cards had an ML-KEM key (made with that version's code).
OLD_SIGNED_PERMIT = (
    '{"permit":{"permit_id":"p-2025-7","version":1,"application_id":"","issuer":{"name":'
    '"hdab-fi","role":"hdab","signing_key":"DE7/8w8LvM76KIZr873KlpeJvv7aFnU4ioiQbLl4YKg=",'
    '"encryption_key":"038tdfmTXZ8d7HRtt//QRYbFvEkH4fyCI4uPPfP+ayw="},"holder":"Example '
    'Hospital","purposes":["e-scientific-research"],"description":"","persons":[{"name":'
    '"ada","role":"researcher","signing_key":"f3kpKLi/3yQx9gjYx3QV6M08MyQasqoE+/fmUGyfiJU=",'
    '"encryption_key":"gVAG7s5/UEefuD3LcmjD19Ddjk9ybyVeAVjd6Bx31ws="}],"datasets":[{'
    '"dataset":"lung","variables":null,"epsilon":null}],"task_types":["describe"],'
    '"access":"anonymised","valid_from":"2025-01-01T00:00:00Z","valid_until":'
    '"2030-01-01T00:00:00Z","output":{"models_may_leave":false},"conditions":"",'
    '"issued_at":"2025-01-01T00:00:00Z"},"signature":"8DOoC1FoTQx4hk2PU1cdTgNtCT202NAytKOJoH'
    'CA3/hv5SPL8iNvzFZzDlGn+zC3aZj8OI4WEww5gD2ZfI/4Cg=="}'
)


def test_an_old_card_and_a_permit_signed_over_old_cards_still_verify() -> None:
    signed = SignedPermit.model_validate_json(OLD_SIGNED_PERMIT)
    issuer = signed.permit.issuer
    assert issuer.mlkem_key is None and signed.permit.persons[0].mlkem_key is None
    assert signed.verified({issuer.name: issuer.verifying_key()}) == signed.permit
    # ... and again after a round trip through the coordinator's storage.
    again = SignedPermit.model_validate_json(signed.model_dump_json())
    assert again.model_dump_json() == OLD_SIGNED_PERMIT
    assert again.verified({issuer.name: issuer.verifying_key()}) == signed.permit
    # Results under it are sealed to the X25519 keys its cards name.
    box = json.loads(seal(RESULT, (signed.permit.persons[0], issuer), context="t"))
    assert {r["suite"] for r in box["recipients"].values()} == {X25519_SUITE}


def test_a_permit_covers_its_cards_ml_kem_keys() -> None:
    permit = Permit(
        permit_id="p-2026-1",
        issuer=BODY.card,
        holder="Example Hospital",
        purposes=(Purpose.SCIENTIFIC_RESEARCH,),
        persons=(ADA.card, dataclasses.replace(MALLORY, mlkem=None).card),
        datasets=(DatasetGrant(dataset="lung"),),
        task_types=("describe",),
        valid_from=datetime.datetime(2026, 1, 1, tzinfo=UTC),
        valid_until=datetime.datetime(2027, 1, 1, tzinfo=UTC),
    )
    signed = SignedPermit.model_validate_json(permit.sign(BODY.signing).model_dump_json())
    trusted = {BODY.name: BODY.signing.public_key()}
    assert signed.verified(trusted).persons[0].mlkem_key == ADA.card.mlkem_key
    # A coordinator swapping in an ML-KEM key of its own breaks the body's signature.
    swapped = signed.model_dump(mode="json")
    swapped["permit"]["persons"][0]["mlkem_key"] = MALLORY.card.mlkem_key
    with pytest.raises(PermitRefused) as caught:
        SignedPermit.model_validate(swapped).verified(trusted)
    assert caught.value.rule == "permit.signature"
    # Nor may it drop the key to force the classical suite.
    del swapped["permit"]["persons"][0]["mlkem_key"]
    with pytest.raises(PermitRefused):
        SignedPermit.model_validate(swapped).verified(trusted)
