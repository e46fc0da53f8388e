"""`builder release`: plan the bundles, skip those the registry has, build the rest on Ray, push one index.

Ray does the distribution: each build is one task with the resources it needs (CPUs; a GPU of the right
`accelerator_type` for a TensorRT engine; any custom resources the spec asks for), Ray places it on a node
that has them and runs it again elsewhere when its node dies. This module only plans, submits, watches and
reports.
"""
from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from dataclasses import dataclass, field
from typing import Any, Optional

from builder.core.errors import UserError
from builder.core.log import notice
from builder.releases.spec import BUILD_TAG_PREFIX, PlannedBundle, ReleaseSpec

DEFAULT_REPORT_ROOT = "releases"
#: how often the driver asks the progress board while builds run
POLL_S = 0.5


@dataclass
class Outcome:
    """What became of one build key."""

    status: str  # built | cached | failed
    digest: Optional[str] = None
    size: int = 0  # the bundle layer's bytes
    manifest_size: int = 0
    seconds: Optional[float] = None
    node: Optional[str] = None
    accuracy: Optional[str] = None
    error: Optional[str] = None
    attempts: int = 0
    warnings: list[str] = field(default_factory=list)  # what the build warned of on its node


@dataclass
class ReleaseResult:
    spec: ReleaseSpec
    planned: list[PlannedBundle]
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # build key -> outcome
    nodes: dict[str, str] = field(default_factory=dict)  # node id -> how the report names it
    index: Optional[str] = None  # REGISTRY/NAME:VERSION@sha256:... once pushed
    report: Optional[pathlib.Path] = None
    dry_run: bool = False

    @property
    def failed(self) -> list[PlannedBundle]:
        return [p for p in self.planned if self.outcomes.get(p.key, Outcome("planned")).status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.dry_run and not self.failed and self.index is not None

    @property
    def failed_builds(self) -> int:
        """How many builds failed (a key shared by several bundles fails once)."""
        return len({p.key for p in self.failed})

    @property
    def built(self) -> list[str]:
        """The build keys built by this run (a key shared by several bundles is built once)."""
        return [k for k, o in self.outcomes.items() if o.status == "built"]

    @property
    def cached(self) -> list[str]:
        return [k for k, o in self.outcomes.items() if o.status == "cached"]

    def rows(self) -> list[dict[str, str]]:
        """One row per bundle: what the summary, the report and --dry-run print."""
        rows = []
        for p in self.planned:
            o = self.outcomes.get(p.key, Outcome("planned"))
            rows.append({
                "#": str(p.number), "bundle": p.label, "status": o.status, "key": p.key[:12],
                "digest": (o.digest or "")[7:19], "size": _size(o.size) if o.size else "",
                "time": f"{o.seconds:.1f} s" if o.seconds is not None else "",
                "node": self.nodes.get(o.node, (o.node or "")[:8]),
                "attempts": str(o.attempts) if o.attempts else "",
                "accuracy": o.accuracy or "", "error": o.error or "",
            })
        return rows

    def table(self) -> str:
        from builder.core.tables import text_table

        columns = (("#", "bundle", "key", "resources") if self.dry_run else
                   ("#", "bundle", "status", "digest", "size", "time", "node", "accuracy"))
        rows = self.rows()
        if self.dry_run:
            for row, p in zip(rows, self.planned):
                row["resources"] = ", ".join(f"{k} {v:g}" for k, v in requested(self.spec, p).items())
        lines = text_table([columns] + [tuple(row[c] for c in columns) for row in rows],
                           "r" + "l" * (len(columns) - 1))
        for p, row in zip(self.planned, rows):
            if row["error"]:
                lines.append(f"bundle {p.number} ({p.label}) failed: {row['error']}")
        if self.dry_run:
            lines.append(f"{len(self.planned)} bundles, {len({p.key for p in self.planned})} builds "
                         f"(dry run: nothing built)")
        else:
            lines.append(f"{len(self.built)} built, {len(self.cached)} cached, "
                         f"{self.failed_builds} failed"
                         + (f"; index {self.index}" if self.index else "; no index pushed")
                         + (f"; report {self.report}" if self.report else ""))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def release(release_file: str | pathlib.Path, dry_run: bool = False, address: Optional[str] = None,
            max_parallel: Optional[int] = None, report_dir: Optional[str | pathlib.Path] = None) -> ReleaseResult:
    """Build every bundle of a release (see builder.releases.spec) and push it with one index.

    `address`: a Ray cluster (`auto`, `HOST:PORT` or `ray://HOST:PORT`); None starts Ray in this process.
    The result says what was built, cached and failed; `ok` is False when a build failed (no index is
    pushed then: re-running builds only what is missing).
    """
    from builder.releases.spec import plan, read_release_file

    if max_parallel is not None and max_parallel < 1:
        raise UserError(f"--max-parallel must be at least 1, not {max_parallel}")
    spec = read_release_file(release_file)
    planned = with_keys(spec, plan(spec, f"release file '{release_file}'"))
    result = ReleaseResult(spec, planned, dry_run=dry_run)
    if dry_run:
        return result
    from builder.core.extras import require

    require("cluster", "ray")  # said before the registry is asked, not only when something turns out to need building
    report_dir = pathlib.Path(report_dir) if report_dir is not None else (
        pathlib.Path(DEFAULT_REPORT_ROOT) / f"{spec.name}-{spec.version}")
    from builder.releases.report import check_report_dir

    check_report_dir(report_dir, spec)  # a report that cannot be written fails before hours of builds
    from builder.oci.index import find_bundle

    client = _client(spec)
    for key in dict.fromkeys(p.key for p in planned):
        stored = find_bundle(client, BUILD_TAG_PREFIX + key)
        if stored is not None:
            result.outcomes[key] = Outcome("cached", stored.digest, stored.layer_size, stored.size,
                                           accuracy=stored.annotations.get("dev.builder.accuracy"))
    wanted = {p.key: p for p in planned if p.key not in result.outcomes}
    notice(f"release {spec.name} {spec.version}: {len(planned)} bundles, {len(wanted)} to build, "
           f"{len(result.outcomes)} in the registry already")
    if wanted:
        import sys

        # Ray's driver prints cluster events (a node that died) on stdout from a thread of its own; stdout is the
        # summary's, so while Ray runs they go where builder's progress goes
        with contextlib.redirect_stdout(sys.stderr):
            _build_on_ray(spec, list(wanted.values()), result, address, max_parallel)
    if not result.failed:
        result.index = _push_index(spec, client, result)
    from builder.releases.report import write_report

    result.report = write_report(result, report_dir)
    return result


def with_keys(spec: ReleaseSpec, planned: list[PlannedBundle]) -> list[PlannedBundle]:
    """The plan with each bundle's build key, for the stage the release's runner resolves to here."""
    from builder.releases.keys import build_key, resolve_stages

    stages = resolve_stages(spec.runner, spec.image, spec.gpu_image, {_kind(p) for p in planned})
    keyed = []
    for p in planned:
        keyed.append(dataclasses.replace(p, key=build_key(p.spec, stages[_kind(p)], p.gpu),
                                         stage=stages[_kind(p)]))
    return keyed


def requested(spec: ReleaseSpec, p: PlannedBundle) -> dict[str, float]:
    """The Ray resources one build asks for."""
    need = {"CPU": float(spec.cpus_per_build)}
    if p.builds_plan:
        need["GPU"] = 1.0
        if p.gpu:
            need[f"accelerator_type:{p.gpu}"] = 0.001  # what Ray's own accelerator_type option asks for
    need.update(p.resources)
    return need


def _kind(p: PlannedBundle) -> str:
    return "gpu" if p.builds_plan else "cpu"


def _client(spec: ReleaseSpec):
    from builder.oci.client import RegistryClient
    from builder.oci.reference import parse_reference

    return RegistryClient(parse_reference(spec.index_reference), spec.insecure)


def _push_index(spec: ReleaseSpec, client, result: ReleaseResult) -> str:
    from builder.core.version import __version__
    from builder.oci.index import StoredBundle, push_index

    entries = []
    for p in result.planned:
        o = result.outcomes[p.key]
        said = {**p.annotations(), "build-key": p.key}
        if o.accuracy:
            said["accuracy"] = o.accuracy
        entries.append((StoredBundle(o.digest, o.manifest_size), said))
    annotations = {"org.opencontainers.image.title": spec.name, "org.opencontainers.image.version": spec.version,
                   "dev.builder.builder-version": __version__, "dev.builder.bundles": str(len(entries))}
    digest, _size = push_index(client, spec.version, entries, annotations)
    pinned = f"{spec.index_reference}@{digest}"
    notice(f"pushed release index {pinned}")
    return pinned


# --- Ray ------------------------------------------------------------------------------------------------------

def _build_on_ray(spec: ReleaseSpec, builds: list[PlannedBundle], result: ReleaseResult, address: Optional[str],
                  max_parallel: Optional[int]) -> None:
    from builder.releases.cluster import cancel_builds, node_names, ray_cluster
    from builder.releases.progress import LiveLines
    from builder.releases.worker import ProgressBoard, build

    with ray_cluster(address) as ray:
        alive = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        runnable = []
        for p in builds:
            need = requested(spec, p)
            if any(all(offer.get(k, 0.0) >= v for k, v in need.items()) for offer in alive):
                runnable.append(p)
            else:
                asked = ", ".join(f"{k} {v:g}" for k, v in need.items())
                result.outcomes[p.key] = Outcome("failed", error=f"no node of the cluster offers {asked}")
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # the board lives on the driver's node: a build node that dies must not take the progress with it
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        board = ray.remote(num_cpus=0)(ProgressBoard).options(scheduling_strategy=here).remote()
        task = ray.remote(build)
        pending, running = list(runnable), {}
        live = LiveLines(len(builds))
        try:
            while pending or running:
                while pending and (max_parallel is None or len(running) < max_parallel):
                    p = pending.pop(0)
                    need = requested(spec, p)
                    job = _job(spec, p)
                    ref = task.options(num_cpus=need.pop("CPU"), num_gpus=need.pop("GPU", 0), resources=need,
                                       max_retries=spec.retries, retry_exceptions=False,
                                       name=f"builder-release:{p.label}").remote(job, board)
                    running[ref] = p
                done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
                states = ray.get(board.snapshot.remote())
                if any(state["node"] not in result.nodes for state in states.values()):  # a node not seen yet
                    result.nodes.update(node_names(ray))
                live.show([(p, states.get(p.key)) for p in running.values()], result.nodes)
                for ref in done:
                    p = running.pop(ref)
                    outcome = _collect(ray, ref, states.get(p.key) or {})
                    result.outcomes[p.key] = outcome
                    live.finished(p, outcome, result.nodes)
        except BaseException:  # Ctrl-C, SIGTERM (builder.core.signals), a bug: builds stop and clean up
            cancel_builds(ray, list(running))
            raise
        finally:
            live.close()


def _job(spec: ReleaseSpec, p: PlannedBundle) -> dict[str, Any]:
    return {"key": p.key, "name": p.spec.model_name, "options": p.options, "stage": p.stage, "gpu": p.gpu,
            "verify": spec.verification(p.spec.export.model),
            "repository": spec.repository, "tag": BUILD_TAG_PREFIX + p.key, "insecure": spec.insecure}


def _collect(ray, ref, state: dict) -> Outcome:
    attempts = state.get("attempts", 0)
    try:
        answer = ray.get(ref)
    except ray.exceptions.RayError as e:  # the node died more often than retries allow, or Ray itself failed
        reason = " ".join(str(e).split())
        return Outcome("failed", error=f"Ray could not finish the build: {reason[:300]}", attempts=attempts,
                       node=state.get("node"))
    if not answer["ok"]:
        return Outcome("failed", error=answer["error"], seconds=answer["seconds"], node=answer["node"],
                       attempts=attempts, warnings=answer["warnings"])
    return Outcome("built", answer["digest"], answer["size"], answer["manifest_size"], answer["seconds"],
                   answer["node"], answer["accuracy"], attempts=attempts, warnings=answer["warnings"])


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)

