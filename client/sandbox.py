"""A real federated network on this machine, for trying analyses and for tests.

``Sandbox.from_frame(df, split_by="inst", dataset="lung")`` writes each part
of the frame to its own node's data directory, starts a coordinator process and
one node process per part on loopback -- the same programs, configuration
files and gRPC streams as a real deployment -- and hands out the same
``Session`` class a researcher uses against a real network.

The secure path is the only path: the sandbox makes a network CA, gives the
coordinator, each node, a data-access body and a researcher their own keys
and certificates, and every task runs under a permit the body signed
(``session(permit=...)`` grants one on first use).
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import pandas as pd
import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from oncofed.client.access import DataAccessClient
from oncofed.client.session import Session
from oncofed.governance.keys import Identity, Role
from oncofed.governance.permits import (
    DatasetGrant,
    OutputPolicy,
    Permit,
    Purpose,
    ReleaseMode,
    SignedPermit,
    SignedRevocations,
    utcnow,
)
from oncofed.governance.pki import CA_CERT, CRL_FILE, init_network, issue, request
from oncofed.kernel.errors import ConfigError, CoordinatorUnavailable, SandboxError
from oncofed.kernel.schema import NAME_PATTERN, DatasetSchema, infer_schema
from oncofed.node.identity import load_or_create_identity, public_key_text
from oncofed.privacy.policy import NodePolicy
from oncofed.tasks import TASKS

START_TIMEOUT = 90.0
HDAB = "hdab"  # the sandbox's data-access body
MAX_SUGGESTED_NODES = 32
"""A column with more values than this is not offered as a split: each value is a process."""


def _without_none(value: Any) -> Any:
    """TOML has no null: a setting left None is left out, and its default applies."""
    if isinstance(value, Mapping):
        return {str(k): _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value]
    return value


def node_config_toml(
    name: str,
    coordinator: str,
    dataset: str,
    data_file: Path,
    schema: DatasetSchema,
    heartbeat_seconds: float,
    policy: NodePolicy,
    peers: Mapping[str, str] | None = None,
    *,
    credentials: Path,
    trusted_bodies: Mapping[str, str],
    approval: str = "automatic",
    allowed_tasks: list[str] | None = None,
) -> str:
    """A node's config file, as ``oncofed.node.config.load_node_config`` reads it."""
    config: dict[str, Any] = {
        "name": name,
        "coordinator": coordinator,
        "heartbeat_seconds": heartbeat_seconds,
        "credentials": str(credentials),
        "governance": {"trusted_bodies": dict(trusted_bodies)},
        "datasets": {
            dataset: {
                "path": str(data_file),
                "approval": approval,
                "allowed_tasks": allowed_tasks,
                "columns": {
                    column: spec.model_dump(mode="json", exclude_defaults=True)
                    for column, spec in schema.columns.items()
                },
            }
        },
        "policy": policy.model_dump(mode="json"),
        "secure_aggregation": {"peers": dict(peers)} if peers else None,
    }
    return tomli_w.dumps(_without_none(config))


def with_release(policy: NodePolicy, dataset: str, release: ReleaseMode) -> NodePolicy:
    """The policy, allowing exact answers on ``dataset`` where ``release`` is exact."""
    if release == "dp":
        return policy
    privacy = policy.privacy_for(dataset).model_copy(update={"allow_exact": True})
    return policy.model_copy(update={"dp": {**policy.dp, dataset: privacy}})


def split_columns(frame: pd.DataFrame) -> list[str]:
    """The columns a sandbox can split ``frame`` by, each with the number of nodes it makes:
    no missing value, and from 2 to ``MAX_SUGGESTED_NODES`` distinct values."""
    counts = {
        str(column): int(values.nunique())
        for column, values in frame.items()
        if not values.isna().any()
    }
    return [
        f"{column} ({n} nodes)" for column, n in counts.items() if 2 <= n <= MAX_SUGGESTED_NODES
    ]


def _node_name(split_by: str, value: Any) -> str:
    label = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if re.match(NAME_PATTERN, label) and not label.isdigit():
        return label
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{split_by}-{label}")
    return (name if re.match(r"^[A-Za-z0-9]", name) else f"node-{name}")[:64]


class Sandbox:
    """A coordinator and one node per partition, as real processes on loopback.

    ``release="dp"`` (the default, as on a real network): every answer carries
    differential-privacy noise. ``release="exact"``: the nodes allow exact
    answers on the dataset and the sandbox's permits grant them, on any row
    filter unless ``cohorts`` names the only ones allowed.

    ``stop()`` removes the sandbox's own folder (its keys, data copies and
    database) unless ``keep``; its ``logs`` stay when ``keep_logs`` is set or
    the sandbox failed, as the error points to them.
    """

    def __init__(
        self,
        partitions: Mapping[str, pd.DataFrame],
        *,
        dataset: str = "data",
        schema: DatasetSchema | None = None,
        workdir: Path | None = None,
        database_url: str | None = None,
        heartbeat_seconds: float = 1.0,
        keep: bool = False,
        policy: NodePolicy | None = None,
        approval: str = "automatic",
        researcher: str = "ada",
        release: ReleaseMode = "dp",
        cohorts: Mapping[str, str] | None = None,
        keep_logs: bool = False,
    ) -> None:
        if not partitions:
            raise SandboxError("a sandbox needs at least one partition", rule="sandbox.nodes")
        # Checked here, not by the node processes, which would refuse it only once started.
        if not re.match(NAME_PATTERN, dataset):
            raise ConfigError(
                f"dataset name {dataset!r} is not allowed",
                rule="sandbox.dataset",
                fix="use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
            )
        self.dataset = dataset
        self.partitions = dict(partitions)
        self.schema = schema or infer_schema(pd.concat(list(self.partitions.values())))
        self._own_dir = workdir is None
        # Absolute: each node resolves paths from its own config file's folder.
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="oncofed-sandbox-")).resolve()
        self.database_url = database_url or f"sqlite:///{self.workdir / 'coordinator.db'}"
        self.heartbeat_seconds = heartbeat_seconds
        self.keep = keep
        self.keep_logs = keep_logs
        self._failed = False
        # The same model as a real node's [policy] section, with the same safe defaults;
        # "exact" is both sides' consent: the nodes allow it and permits grant it.
        self.release = release
        # Exact answers on any filter by default: a sandbox holds data its user already has.
        self.cohorts = dict(cohorts) if cohorts is not None else None
        self.policy = with_release(policy or NodePolicy(), dataset, release)
        self.approval = approval
        self.researcher = researcher
        self.pki = self.workdir / "pki"
        self._granted: set[str] = set()
        self.port = 0
        self._coordinator: subprocess.Popen[bytes] | None = None
        self._nodes: dict[str, subprocess.Popen[bytes]] = {}
        self._identities: dict[str, str] = {}
        self._logs: list[IO[bytes]] = []

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        split_by: str,
        *,
        dataset: str = "data",
        schema: DatasetSchema | None = None,
        **options: Any,
    ) -> Sandbox:
        """One node per distinct value of ``split_by``; ``schema`` replaces the inferred one
        (to declare DP bounds, say)."""
        # The caller's choice, not a failure of the sandbox: ConfigError, exit code 3.
        if split_by not in frame.columns:
            candidates = split_columns(frame)
            raise ConfigError(
                f"column {split_by!r} is not in the frame",
                rule="sandbox.split_by",
                fix=f"split by one of: {', '.join(candidates)}"
                if candidates
                else "add a column naming each row's centre, with no missing values",
            )
        if frame[split_by].isna().any():
            raise ConfigError(
                f"{int(frame[split_by].isna().sum())} row(s) have no {split_by!r}",
                rule="sandbox.split_by",
                fix=f"fill or drop rows with a missing {split_by!r} first",
            )
        partitions: dict[str, pd.DataFrame] = {}
        for value, part in frame.groupby(split_by, sort=True):
            name = _node_name(split_by, value)
            if name in partitions:
                raise ConfigError(
                    f"two values of {split_by!r} make the same node name {name!r}",
                    rule="sandbox.split_by",
                    fix="recode the column so its values differ in letters or digits",
                )
            partitions[name] = part.reset_index(drop=True)
        return cls(partitions, dataset=dataset, schema=schema or infer_schema(frame), **options)

    # ---- lifecycle -------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def node_names(self) -> list[str]:
        return list(self.partitions)

    @property
    def logs(self) -> Path:
        """The folder of the processes' logs, one ``NAME.log`` each."""
        return self.workdir / "logs"

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._make_network()
            for name, part in self.partitions.items():
                node_dir = self.workdir / name
                node_dir.mkdir(parents=True, exist_ok=True)
                part.to_parquet(node_dir / f"{self.dataset}.parquet", index=False)
                # Each node's own identity, pinned by every other node, as operators would.
                identity = load_or_create_identity(node_dir / "state")
                self._identities[name] = public_key_text(identity.public_key())
            self.start_coordinator()
            self.publish_revocations()
            for name in self.partitions:
                self.start_node(name)
            self.wait_for_nodes(self.node_names)
        except BaseException:
            self._failed = True
            self.stop()
            raise

    def stop(self) -> None:
        for name in list(self._nodes):
            self.stop_node(name)
        self.stop_coordinator()
        for handle in self._logs:
            handle.close()
        self._logs.clear()
        if not self._own_dir or self.keep:
            return
        if not (self.keep_logs or self._failed):
            shutil.rmtree(self.workdir, ignore_errors=True)
            return
        # Keys, data copies and the database go; the logs someone is debugging with stay.
        for entry in self.workdir.iterdir() if self.workdir.is_dir() else ():
            if entry == self.logs:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    # ---- the network's people, keys and permits ---------------------------

    def credentials(self, name: str) -> Path:
        """The credentials folder of a person or node of this sandbox (made on first use)."""
        return self.pki / name

    def _make_network(self) -> None:
        """A CA, and each party's own keys and certificate, as ``oncofed pki`` makes them."""
        if (self.pki / "ca" / CA_CERT).exists():
            return
        init_network(self.pki / "ca", "oncofed-sandbox")
        self.enrol("coordinator", "coordinator", hosts=("127.0.0.1", "localhost"))
        self.enrol(HDAB, "hdab")
        self.enrol(self.researcher, "researcher")
        for name in self.partitions:
            self.enrol(name, "node")

    def enrol(self, name: str, role: Role, hosts: tuple[str, ...] = ()) -> Path:
        """Keys made in the party's own folder, the certificate issued by the sandbox CA."""
        folder = self.credentials(name)
        issue(self.pki / "ca", request(folder, role, name, hosts))
        return folder

    def node_identity(self, name: str) -> Ed25519PublicKey:
        """A node's public key, which signs its secure-aggregation adverts and audit checkpoints."""
        return load_or_create_identity(self.workdir / name / "state").public_key()

    def identity(self, name: str) -> Identity:
        return Identity.load(self.credentials(name))

    def grant(
        self,
        permit_id: str,
        *,
        persons: list[str] | None = None,
        task_types: list[str] | None = None,
        variables: list[str] | None = None,
        datasets: list[str] | None = None,
        epsilon: float | None = None,
        release: ReleaseMode | None = None,
        any_filter: bool = False,
        valid_from: datetime.datetime | None = None,
        valid_until: datetime.datetime | None = None,
        models_may_leave: bool = True,
        version: int = 1,
    ) -> SignedPermit:
        """A permit signed by the sandbox's data-access body and published to the coordinator.

        Defaults grant the sandbox researcher every installed task on the
        sandbox dataset for a day, in the sandbox's release mode and on its
        cohorts (``any_filter``: exact answers on any row filter whatever they are).
        """
        body = self.identity(HDAB)
        now = utcnow()
        permit = Permit(
            permit_id=permit_id,
            version=version,
            issuer=body.card,
            holder="oncofed sandbox",
            purposes=(Purpose.SCIENTIFIC_RESEARCH,),
            persons=tuple(self.identity(p).card for p in (persons or [self.researcher])),
            datasets=tuple(
                DatasetGrant(
                    dataset=d,
                    variables=tuple(variables) if variables is not None else None,
                    epsilon=epsilon,
                    release=release or self.release,
                    cohorts=None if any_filter else self.cohorts,
                )
                for d in (datasets or [self.dataset])
            ),
            task_types=tuple(task_types or sorted(TASKS)),
            valid_from=valid_from or now - datetime.timedelta(hours=1),
            valid_until=valid_until or now + datetime.timedelta(days=1),
            output=OutputPolicy(models_may_leave=models_may_leave),
        )
        signed = permit.sign(body.signing)
        self.publish_permit(signed)
        if version > 1:
            self.publish_revocations(superseded={permit_id: version})
        return signed

    def publish_permit(self, signed: SignedPermit) -> None:
        """Publish a permit as the sandbox's data-access body (sessions then use it as is)."""
        with DataAccessClient(self.address, self.credentials(HDAB)) as body_client:
            body_client.publish_permit(signed)
        self._granted.add(signed.permit.permit_id)

    def publish_revocations(
        self,
        permit_ids: list[str] | None = None,
        valid_for: datetime.timedelta = datetime.timedelta(days=1),
        superseded: dict[str, int] | None = None,
    ) -> SignedRevocations:
        """The body's next revocation list (revoking ``permit_ids``, and versions of a
        permit older than ``superseded`` names), published."""
        with DataAccessClient(self.address, self.credentials(HDAB)) as body_client:
            return body_client.revise_revocations(
                permit_ids or [], valid_for=valid_for, superseded=superseded
            )

    def researcher_env(self, permit: str = "sandbox") -> dict[str, str]:
        """Environment variables for the `oncofed` command as the sandbox researcher."""
        if permit not in self._granted:
            self.grant(permit)
        return {
            "ONCOFED_CREDENTIALS": str(self.credentials(self.researcher)),
            "ONCOFED_PERMIT": permit,
        }

    def session(self, permit: str = "sandbox", **options: Any) -> Session:
        """A researcher session under ``permit`` (granted on first use) on this sandbox."""
        options.setdefault("dataset", self.dataset)
        options.setdefault("credentials", self.credentials(self.researcher))
        if permit not in self._granted:
            self.grant(permit)
        return Session(self.address, permit=permit, **options)

    # ---- processes (also used by fault-injection tests) -------------------

    def start_coordinator(self) -> None:
        ready = self.workdir / "coordinator.port"
        ready.unlink(missing_ok=True)
        self._coordinator = self._spawn(
            "coordinator",
            "coordinator",
            "start",
            "--db",
            self.database_url,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--ready-file",
            str(ready),
            "--heartbeat",
            str(self.heartbeat_seconds),
            "--credentials",
            str(self.credentials("coordinator")),
            "--crl",
            str(self.pki / "ca" / CRL_FILE),
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            self._check_alive("coordinator", self._coordinator)
            if time.monotonic() > deadline:
                raise SandboxError("the coordinator did not start", rule="sandbox.start")
            time.sleep(0.05)
        self.port = int(ready.read_text().strip())

    def stop_coordinator(self, kill: bool = False) -> None:
        if self._coordinator is not None:
            _terminate(self._coordinator, kill)
            self._coordinator = None

    def start_node(self, name: str, env: Mapping[str, str] | None = None) -> None:
        """Start (or restart) a node; ``env`` adds environment variables to its process."""
        config = self.workdir / name / "node.toml"
        config.write_text(
            node_config_toml(
                name,
                self.address,
                self.dataset,
                self.workdir / name / f"{self.dataset}.parquet",
                self.schema,
                self.heartbeat_seconds,
                self.policy,
                {peer: key for peer, key in self._identities.items() if peer != name},
                credentials=self.credentials(name),
                trusted_bodies={HDAB: self.identity(HDAB).card.signing_key},
                approval=self.approval,
            )
        )
        self._nodes[name] = self._spawn(name, "node", "start", str(config), env=env)

    def stop_node(self, name: str, kill: bool = False) -> None:
        process = self._nodes.pop(name, None)
        if process is not None:
            _terminate(process, kill)

    def wait_node_exit(self, name: str, timeout: float = START_TIMEOUT) -> int | None:
        """Wait for a node process to end by itself; its exit code (None if still running)."""
        try:
            return self._nodes[name].wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal_node(self, name: str, signum: signal.Signals) -> None:
        """Send a signal to a node process (tests freeze and kill nodes with it)."""
        os.kill(self._nodes[name].pid, signum)

    def node_config(self, name: str) -> Path:
        return self.workdir / name / "node.toml"

    def wait_for_nodes(self, names: list[str], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with Session(
            self.address, credentials=self.credentials(self.researcher), progress=False
        ) as probe:
            while True:
                for name, process in self._nodes.items():
                    self._check_alive(name, process)
                try:
                    listing = probe.nodes()
                    online = set(listing.loc[listing["online"], "name"])
                except CoordinatorUnavailable:
                    online = set()
                if set(names) <= online:
                    return
                if time.monotonic() > deadline:
                    missing = sorted(set(names) - online)
                    self._failed = True
                    raise SandboxError(
                        f"node(s) {missing} did not connect within {timeout:g} s",
                        rule="sandbox.start",
                        fix=f"see the logs in {self.logs}",
                    )
                time.sleep(0.1)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _spawn(
        self, name: str, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        handle = (self.logs / f"{name}.log").open("ab")
        self._logs.append(handle)
        return subprocess.Popen(
            [sys.executable, "-m", "oncofed", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )

    def _check_alive(self, name: str, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is not None:
            self._failed = True
            raise SandboxError(
                f"{name} exited with code {process.returncode}: {self.log_tail(name, 5)}",
                rule="sandbox.start",
                fix=f"see {self.logs / (name + '.log')}",
            )


def _terminate(process: subprocess.Popen[bytes], kill: bool) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


__all__ = ["Sandbox", "node_config_toml"]
