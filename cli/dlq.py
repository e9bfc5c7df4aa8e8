"""``orderflow dlq``: dead letters (tasks that failed for good): list, show, replay, discard."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from cli.common import Column, command, console, fail, json_option, print_json, print_listing, when

dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: tasks that failed for good")


DEAD_LETTER_COLUMNS = (
    Column("id", "id", ident=True), Column("task", "task"),
    Column("order", "order_id", ident=True),
    Column("error", lambda d: f"{d['error_class'].rsplit('.', 1)[-1]}: {d['error'][:80]}"),
    Column("attempts", "attempts"), Column("at", "created_at"),
)  # fmt: skip


@dlq_app.command("list")
@command
def dlq_list(limit: int = typer.Option(100, min=1), as_json: bool = json_option()) -> None:
    """Open dead letters, oldest first (the table cuts errors at 80 characters; --json does not)."""
    from services import dead_letters
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        rows = [
            {"id": dl.id, "task": dl.task_name, "task_id": dl.task_id, "queue": dl.queue,
             "order_id": dl.order_id, "error_class": dl.error_class, "error": dl.error_message,
             "attempts": dl.attempts, "created_at": when(dl.created_at)}
            for dl in dead_letters.list_open(session, limit)
        ]  # fmt: skip
    print_listing(rows, DEAD_LETTER_COLUMNS, as_json=as_json, empty="no dead letters")


@dlq_app.command("show")
@command
def dlq_show(dead_letter_id: int) -> None:
    """One dead letter: task, arguments, error, attempts, status."""
    from services import dead_letters
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        dl = dead_letters.find(session, dead_letter_id)
        if dl is None:
            raise fail(f"id: no dead letter {dead_letter_id}")
        print_json(
            {
                "id": dl.id, "task": dl.task_name, "task_id": dl.task_id, "queue": dl.queue,
                "order_id": dl.order_id, "args": dl.args, "kwargs": dl.kwargs,
                "error_class": dl.error_class, "error": dl.error_message,
                "attempts": dl.attempts, "status": dl.status, "created_at": dl.created_at,
                "resolved_at": dl.resolved_at,
            }
        )  # fmt: skip


@dlq_app.command("replay")
@command
def dlq_replay(dead_letter_id: int) -> None:
    """Run a dead-lettered task again."""
    from services import dead_letters
    from services.unit_of_work import unit_of_work
    from workers.publish import enqueue_replay

    with unit_of_work() as session:
        replay = dead_letters.replay(session, dead_letter_id, now=datetime.now(UTC), actor="cli")
    enqueue_replay(replay, actor="cli")  # raises after reopening the dead letter if not published
    console.print(f"replayed dead letter {dead_letter_id} ({replay.task_name})")


@dlq_app.command("discard")
@command
def dlq_discard(dead_letter_id: int) -> None:
    """Mark a dead letter as handled without running it."""
    from services import dead_letters
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        dead_letters.discard(session, dead_letter_id, now=datetime.now(UTC), actor="cli")
    console.print(f"discarded dead letter {dead_letter_id}")
