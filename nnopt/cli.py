"""The ``nnopt`` command line (SPEC §4).

Only click is imported at start-up: ``nnopt --help`` and ``nnopt list`` never import torch or a
plugin, and a fully cached ``nnopt run`` is answered from the plan index without either.
Exit codes: 0 done, 1 a stage failed or diverged, 2 invalid spec or command line,
75 a needed stage is busy in another run and ``--no-wait`` was given, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

EXIT_FAILED, EXIT_SPEC, EXIT_BUSY, EXIT_INTERRUPTED = 1, 2, 75, 130


class _Group(click.Group):
    """Maps the engine's exceptions to exit codes and one-line messages (no tracebacks)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # --debug is accepted anywhere on the line (`nnopt validate f.yaml --debug` too)
        if "--debug" in args:
            ctx.meta["debug"] = True
            args = [a for a in args if a != "--debug"]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        from nnopt.core.errors import PluginError, SpecError
        from nnopt.core.store import CorruptStore, StageBusy

        debug = ctx.meta.get("debug", False)
        try:
            return super().invoke(ctx)
        except SpecError as err:
            if debug:
                traceback.print_exc()
            for diag in err.diagnostics:
                click.echo(str(diag), err=True)
            n = len(err.diagnostics)
            click.echo(f"{n} error{'s' if n != 1 else ''}; nothing was run", err=True)
            _json_error(ctx, "invalid", errors=[d.to_json() for d in err.diagnostics])
            ctx.exit(EXIT_SPEC)
        except PluginError as err:
            click.echo(f"error: {err}", err=True)
            _json_error(ctx, "invalid", errors=[{"message": str(err)}])
            ctx.exit(EXIT_SPEC)
        except StageBusy as err:
            click.echo(f"a stage this run needs is being computed by another run (lock {err}); --no-wait given", err=True)
            _json_error(ctx, "busy", lock=str(err))
            ctx.exit(EXIT_BUSY)
        except CorruptStore as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            click.echo("interrupted: finished stages are kept; a stage that saved a checkpoint resumes from it "
                       "on the next run, any other is computed again", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # `nnopt list | head`: the reader left; say nothing more
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EXIT_FAILED)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as err:  # pragma: no cover - a bug: say so, traceback on request
            if debug:
                raise
            click.echo(f"internal error: {type(err).__name__}: {err} (rerun with --debug for a traceback)", err=True)
            ctx.exit(EXIT_FAILED)


def _json_error(ctx: click.Context, status: str, **fields: Any) -> None:
    """With ``--json``, a failed command still prints one JSON object on stdout."""
    if ctx.meta.get("json"):
        click.echo(json.dumps({"status": status, **fields}))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nnopt")
@click.option("--debug", is_flag=True, help="show tracebacks (accepted anywhere on the command line)")
def main(debug: bool) -> None:
    """nnopt: runnable, cached pipelines for the optimization of deep networks.

    Write a pipeline.yaml, then `nnopt run pipeline.yaml`. Every stage is stored under a
    content-addressed key, so nothing is computed twice.
    """


def _store(path: str | None):
    from nnopt.core.errors import Diagnostic, Location, SpecError
    from nnopt.core.store import Store, default_root

    root = Path(path) if path else default_root()
    if root.exists() and not root.is_dir():
        raise SpecError([Diagnostic(Location(f"--store {root}"), "", "the store must be a directory, and this is a file")])
    return Store(root)


store_option = click.option("--store", "store_dir", metavar="DIR", help="the store (default $NNOPT_HOME, else ./.nnopt)")
set_option = click.option("--set", "sets", multiple=True, metavar="PATH=VALUE", help="override a value of the file (YAML-typed)")
json_option = click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")


# ---------------------------------------------------------------------------------- run
@main.command()
@click.argument("file")
@set_option
@click.option("--force", is_flag=True, help="recompute every stage")
@click.option("--redo", multiple=True, metavar="STAGE", help="recompute STAGE and what depends on it")
@store_option
@json_option
@click.option("--no-wait", is_flag=True, help="exit 75 instead of waiting for a stage another run is computing")
@click.option("--no-progress", is_flag=True, help="no progress bars on stderr")
def run(file: str, sets: tuple[str, ...], force: bool, redo: tuple[str, ...], store_dir: str | None, as_json: bool,
        no_wait: bool, no_progress: bool) -> None:
    """Validate FILE, plan it, and run every stage that is not cached."""
    click_ctx = click.get_current_context()
    click_ctx.meta["json"] = as_json
    debug = click_ctx.meta.get("debug", False)
    from nnopt.core import plan_index
    from nnopt.core.registry import Registry
    from nnopt.core.runner import cached_runs

    store = _store(store_dir)
    registry = Registry()
    _require_file(file)
    _share_the_cpu_politely(store)
    digest = plan_index.index_digest(file, list(sets), registry)
    if not force and not redo:
        entry = plan_index.lookup(store, digest)
        if entry is not None:
            reports = cached_runs(store, entry, file, sys.argv)
            if not as_json:
                for rep in (s for r in reports for s in r.stages):
                    click.echo(f"  {_stage_line(rep)}", err=True)
            _finish(reports, as_json, entry["pipeline"])

    from nnopt.core.planner import load_plans
    from nnopt.core.runner import new_run_id, run_plan

    plans = load_plans(file, list(sets), registry)
    _check_redo(plans, redo)
    show = (lambda rep: None) if as_json else (lambda rep: click.echo(f"  {_stage_line(rep)}", err=True))
    reports = []
    invocation = new_run_id(plans[0].name)
    for plan in plans:
        if len(plans) > 1 and not as_json:
            click.echo(f"{plan.name} {_params_text(plan.params)}", err=True)
        reports.append(run_plan(plan, store, force=force, redo=set(redo), wait=not no_wait, invocation=invocation,
                                progress=not no_progress and sys.stderr.isatty(), on_stage=show, debug=debug))
    if all(s.status in ("ran", "cached", "diverged") for r in reports for s in r.stages):
        plan_index.save(store, digest, plans)
    _finish(reports, as_json, plans[0].name)


def _share_the_cpu_politely(store) -> None:
    """With another run live in the store, make OpenMP threads wait passively (before torch
    loads). Spinning threads of two runs on one CPU slowed both 10-100x (2 cores, measured);
    one passive run among them brings that back to about 3x. Alone, spinning is faster, so
    it stays the default. An OMP_WAIT_POLICY the user set is left alone."""
    if "OMP_WAIT_POLICY" not in os.environ and store.live_runs():
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def _require_file(file: str) -> None:
    from nnopt.core.errors import Diagnostic, Location, SpecError

    if not Path(file).is_file():
        raise SpecError([Diagnostic(Location(file), "", "no such pipeline file")])


def _check_redo(plans, redo: tuple[str, ...]) -> None:
    from nnopt.core.errors import Diagnostic, Location, SpecError, did_you_mean

    ids = {s.id for p in plans for s in p.stages}
    bad = [Diagnostic(Location(f"--redo {r}"), r, "no such stage in this pipeline", did_you_mean(r, ids)) for r in redo if r not in ids]
    if bad:
        raise SpecError(bad)


def _finish(reports, as_json: bool, pipeline: str) -> None:
    if as_json:
        if len(reports) == 1 and not reports[0].params:
            click.echo(json.dumps(reports[0].to_json()))
        else:
            click.echo(json.dumps({"pipeline": pipeline, "runs": [r.to_json() for r in reports]}))
    else:
        # the stage lines went to stderr as each stage finished; stdout says where results are
        for r in reports:
            click.echo(f"{r.pipeline} {_params_text(r.params)}run {r.run}: {r.status}")
            for s in r.stages:
                click.echo(f"  {s.id:<14} {s.status:<8} {s.dir or s.message or ''}")
    failed = any(r.status != "ok" for r in reports)
    sys.exit(EXIT_FAILED if failed else 0)


def _params_text(params: dict[str, Any]) -> str:
    """``[stages.train.optimizer.lr=0.1, seed=1]``: a matrix combination, as --set would write it."""
    shown = (f"{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, (dict, list)) else v}" for k, v in params.items())
    return ("[" + ", ".join(shown) + "] ") if params else ""


def _stage_line(rep) -> str:
    order = ("train_loss", "test_loss", "test_accuracy", "diverged_at_step")
    shown = {k: rep.metrics[k] for k in order if k in rep.metrics}
    numbers = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    if rep.results and not shown:
        numbers = "results: " + ", ".join(rep.results)
    extra = f"  ({rep.message})" if rep.message and rep.status in ("failed", "skipped", "diverged") else ""
    return f"{rep.id:<14} {rep.status:<8} {rep.seconds:7.2f}s  {numbers}{extra}"


# ---------------------------------------------------------------------------------- plan / validate
@main.command()
@click.argument("file")
@set_option
@store_option
@json_option
def plan(file: str, sets: tuple[str, ...], store_dir: str | None, as_json: bool) -> None:
    """Validate FILE and show each stage, its key, and whether it is cached; runs nothing."""
    click.get_current_context().meta["json"] = as_json
    from nnopt.core.planner import load_plans

    _require_file(file)
    store = _store(store_dir)
    plans = load_plans(file, list(sets))
    out = []
    for p in plans:
        stages = [{"id": s.id, "kind": s.kind, "key": s.key, "cached": store.is_complete(s.key), "from": s.deps} for s in p.stages]
        out.append({"pipeline": p.name, "params": p.params, "stages": stages})
    if as_json:
        click.echo(json.dumps(out[0] if len(out) == 1 and not out[0]["params"] else {"pipeline": plans[0].name, "runs": out}))
        return
    for p in out:
        click.echo(f"{p['pipeline']} {_params_text(p['params'])}")
        for s in p["stages"]:
            deps = f"  <- {', '.join(s['from'])}" if s["from"] else ""
            click.echo(f"  {s['id']:<14} {s['kind']:<10} {s['key'][:16]}  {'cached' if s['cached'] else 'to run'}{deps}")


@main.command()
@click.argument("file")
@set_option
def validate(file: str, sets: tuple[str, ...]) -> None:
    """Validate FILE only."""
    from nnopt.core.planner import load_plans

    _require_file(file)
    plans = load_plans(file, list(sets))
    n = sum(len(p.stages) for p in plans)
    click.echo(f"{file}: valid ({len(plans)} pipeline{'s' if len(plans) != 1 else ''}, {n} stages)")


# ---------------------------------------------------------------------------------- components
@main.command(name="list")
@click.argument("kind", required=False)
@json_option
def list_components(kind: str | None, as_json: bool) -> None:
    """List registered components (name, kind, providing package). Imports no plugin."""
    from nnopt.core.registry import Registry, normalize_kind

    registry = Registry()
    entries = registry.entries(normalize_kind(kind) if kind else None)
    counts: dict[tuple[str, str], int] = {}
    for e in entries:
        counts[(e.kind, e.name)] = counts.get((e.kind, e.name), 0) + 1
    if as_json:
        click.echo(json.dumps([{"kind": e.kind, "name": e.name, "provider": e.dist, "version": e.version, "entry_point": e.value,
                                "conflict": counts[(e.kind, e.name)] > 1} for e in entries]))
        return
    for e in entries:
        clash = "  CONFLICT: provided twice" if counts[(e.kind, e.name)] > 1 else ""
        click.echo(f"{e.kind:<14} {e.name:<20} {e.provider}{clash}")


@main.command()
@click.argument("kind")
@click.argument("name")
def describe(kind: str, name: str) -> None:
    """Print a component's docstring and parameter schema (types, defaults, ranges)."""
    from nnopt.core.describe import describe_component
    from nnopt.core.registry import Registry, normalize_kind

    click.echo(describe_component(Registry(), normalize_kind(kind), name))


@main.command()
def schema() -> None:
    """Print the JSON Schema of the pipeline file (for editors)."""
    from nnopt.core.describe import pipeline_schema
    from nnopt.core.registry import Registry

    click.echo(json.dumps(pipeline_schema(Registry()), indent=2))


# ---------------------------------------------------------------------------------- store
@main.command()
@click.argument("ref", default="latest")
@store_option
@json_option
def show(ref: str, store_dir: str | None, as_json: bool) -> None:
    """Show a stored run or stage: spec, status, metrics, artifact paths.

    REF is a run id (or its prefix), `latest`, a pipeline name (its latest run), a stage key
    prefix, or RUN/STAGE.
    """
    from nnopt.core.lookup import describe_ref

    text, data = describe_ref(_store(store_dir), ref)
    click.echo(json.dumps(data) if as_json else text)


@main.command()
@store_option
@click.option("--stages", is_flag=True, help="list stage directories instead of runs")
@json_option
def ls(store_dir: str | None, stages: bool, as_json: bool) -> None:
    """List the runs (or stages) in the store."""
    from nnopt.core.lookup import list_runs, list_stages

    text, data = (list_stages if stages else list_runs)(_store(store_dir))
    click.echo(json.dumps(data) if as_json else text)


@main.command()
@store_option
@click.option("--keep-last", type=click.IntRange(min=0), default=None, help="keep only the newest N runs of each pipeline")
@click.option("--dry-run", is_flag=True, help="say what would be removed")
def gc(store_dir: str | None, keep_last: int | None, dry_run: bool) -> None:
    """Remove stages that no kept run refers to, and abandoned work directories."""
    from nnopt.core.store import collect_garbage

    rep = collect_garbage(_store(store_dir), keep_last, dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(rep.runs_removed)} runs, {len(rep.stages_removed)} stages, "
               f"{rep.workdirs_removed} work directories ({rep.bytes_freed / 1e6:.1f} MB)")


@main.command()
@click.argument("ref", default="latest")
@store_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="where to write the HTML (default: in the store)")
def report(ref: str, store_dir: str | None, output: str | None) -> None:
    """Write an HTML report of a run (or of the latest run of a pipeline FILE)."""
    from nnopt.core.report import write_report

    click.echo(write_report(_store(store_dir), ref, Path(output) if output else None))


if __name__ == "__main__":  # pragma: no cover
    main()
