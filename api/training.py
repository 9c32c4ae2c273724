"""Training commands: the aggregator starts a task, records rounds, stores models, ends it.

Each is checked against the lifecycle table and the task's own history, so a
restarted aggregator can never record a round twice or skip one.
"""

from __future__ import annotations

import hashlib

from api.domain import TaskState
from api.errors import Conflict, Forbidden, InvalidInput
from api.handlers import Context, Result, load_task, require_transition
from api.keys import KeyCommands, keys_in_force
from api.store import Session, task_stream
from schema.commands import (
    CompleteTask,
    FailTask,
    RecordContributions,
    RecordMissed,
    RecordRejection,
    RecordRound,
)
from schema.events import (
    ContributionsAssessed,
    ParticipantMissedRound,
    RoundCompleted,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
    UpdateRejected,
)
from schema.lifecycle import TaskStatus

MAX_MODEL_BYTES = 1024 * 1024 * 1024


def require_creator(state: TaskState, actor: str, action: str) -> None:
    """Only the task's creator runs its aggregator."""
    if state.creator != actor:
        raise Forbidden(f"only the creator of task '{state.name}' may {action}")


def require_participants(state: TaskState, usernames: list[str]) -> None:
    """Refuse names that are not participants of the task (422)."""
    strangers = sorted(set(usernames) - {m.username for m in state.members})
    if strangers:
        raise InvalidInput(f"not participants of task '{state.name}': {', '.join(strangers)}")


def require_started(state: TaskState, action: str) -> None:
    """Round-level commands need a STARTED task."""
    if state.status != TaskStatus.STARTED:
        raise Conflict(f"cannot {action}: task '{state.name}' is {state.status.value}",
                       {"task": state.name, "status": state.status.value})


class TrainingCommands(KeyCommands):
    """The aggregator's commands, on top of the user, task and key commands."""

    def start(self, name: str, ctx: Context) -> Result:
        """Record TaskStarted once the quorum has joined; membership is then fixed."""

        def decide(session: Session) -> Result:
            state = load_task(session, name)
            require_creator(state, ctx.actor, "start it")
            require_transition(state, TaskStatus.STARTED, "start")
            if len(state.members) < state.quorum:
                raise Conflict(
                    f"task '{name}' has {len(state.members)} of its quorum of {state.quorum}",
                    {"joined": len(state.members), "quorum": state.quorum},
                )
            members = [m.username for m in state.members]
            event = TaskStarted(participants=members, keys=keys_in_force(session, [state.creator, *members]))
            return self._append_and_view(session, state, ctx, event)

        # Exclusive: the keys in force are read from the members' own streams, and a key
        # revoked meanwhile must not be recorded as in force for the task.
        return self._run(ctx, f"start:{name}", {}, decide, exclusive=True)

    def record_round(self, name: str, command: RecordRound, ctx: Context) -> Result:
        """Record the next round; a repeat or a gap is a 409."""

        def decide(session: Session) -> Result:
            state = load_task(session, name)
            require_creator(state, ctx.actor, "record its rounds")
            require_started(state, "record a round")
            expected = state.rounds_completed + 1
            if command.round != expected:
                raise Conflict(f"task '{name}' expects round {expected}, not {command.round}",
                               {"expected_round": expected})
            if command.round > int(state.definition["rounds"]):
                raise Conflict(f"task '{name}' has only {state.definition['rounds']} rounds")
            require_participants(state, command.participants)
            if session.artifact_size(state.task_id, command.model_sha256) is None:
                raise Conflict("upload the round's model before recording the round",
                               {"model_sha256": command.model_sha256})
            event = RoundCompleted(**command.model_dump())
            return self._append_and_view(session, state, ctx, event)

        return self._run(ctx, f"round:{name}", command.model_dump(mode="json"), decide)

    def record_missed(self, name: str, command: RecordMissed, ctx: Context) -> Result:
        """Record who the round now closing (the next one) goes without."""

        def decide(session: Session) -> Result:
            state = load_task(session, name)
            require_creator(state, ctx.actor, "record missed rounds")
            require_started(state, "record a missed round")
            expected = state.rounds_completed + 1
            if command.round != expected:
                raise Conflict(f"task '{name}' is closing round {expected}, not {command.round}")
            require_participants(state, command.participants)
            events = [self._event(ctx, ParticipantMissedRound(round=command.round, username=who))
                      for who in sorted(set(command.participants))]
            return self._view(state, session.append(task_stream(state.task_id), state.version, events))

        return self._run(ctx, f"missed:{name}", command.model_dump(), decide)

    def reject_update(self, name: str, command: RecordRejection, ctx: Context) -> Result:
        """Record an update the aggregator refused."""

        def decide(session: Session) -> Result:
            state = load_task(session, name)
            require_creator(state, ctx.actor, "record rejected updates")
            require_started(state, "record a rejected update")
            return self._append_and_view(session, state, ctx, UpdateRejected(**command.model_dump()))

        return self._run(ctx, f"reject:{name}", command.model_dump(mode="json"), decide)

    def store_model(self, name: str, content: bytes, round: int | None, final: bool,
                    ctx: Context) -> Result:
        """Store a model artifact, content-addressed; the log names it by digest later.

        No event is recorded here: an artifact is a blob, and it becomes part of the
        history only when a RoundCompleted or TaskCompleted names its digest.
        """
        if not content:
            raise InvalidInput("the model body is empty")
        if len(content) > MAX_MODEL_BYTES:
            raise InvalidInput(f"the model is larger than {MAX_MODEL_BYTES} bytes")
        digest = hashlib.sha256(content).hexdigest()

        def decide(session: Session) -> Result:
            state = load_task(session, name)
            require_creator(state, ctx.actor, "store its models")
            require_started(state, "store a model")
            if session.artifact_size(state.task_id, digest) is None:
                session.store_artifact(state.task_id, digest, content)
            return Result(201, {"sha256": digest, "size": len(content), "round": round,
                                "final": final})

        return self._run(ctx, f"model:{name}", {"sha256": digest, "round": round}, decide)

    def complete(self, name: str, command: CompleteTask, ctx: Context) -> Result:
        """Finish the task: every round recorded, the final model stored."""

        def decide(session: Session) -> Result:
            state = load_task(session, name)
            require_creator(state, ctx.actor, "complete it")
            require_transition(state, TaskStatus.COMPLETED, "complete")
            rounds = int(state.definition["rounds"])
            # Early only with a reason (the privacy budget), and after at least one round.
            if state.rounds_completed != rounds and not (command.reason and state.rounds_completed > 0):
                raise Conflict(f"task '{name}' has {state.rounds_completed} of {rounds} rounds")
            if session.artifact_size(state.task_id, command.model_sha256) is None:
                raise Conflict("upload the final model before completing the task")
            if command.keras_sha256 and session.artifact_size(state.task_id, command.keras_sha256) is None:
                raise Conflict("upload the final model's .keras export before completing the task")
            event = TaskCompleted(model_sha256=command.model_sha256, keras_sha256=command.keras_sha256,
                                  reason=command.reason)
            return self._append_and_view(session, state, ctx, event)

        return self._run(ctx, f"complete:{name}", command.model_dump(), decide)

    def fail(self, name: str, command: FailTask, ctx: Context) -> Result:
        """Stop the task for good, with the reason."""

        def decide(session: Session) -> Result:
            state = load_task(session, name)
            require_creator(state, ctx.actor, "fail it")
            require_transition(state, TaskStatus.FAILED, "fail")
            return self._append_and_view(session, state, ctx, TaskFailed(reason=command.reason))

        return self._run(ctx, f"fail:{name}", command.model_dump(), decide)

    def record_contributions(self, name: str, command: RecordContributions, ctx: Context) -> Result:
        """Record what each participant's update was worth to a round already recorded."""

        def decide(session: Session) -> Result:
            state = load_task(session, name)
            require_creator(state, ctx.actor, "record contributions")
            require_started(state, "record contributions")
            if not 1 <= command.round <= state.rounds_completed:
                raise Conflict(f"task '{name}' has recorded {state.rounds_completed} rounds; "
                               f"record round {command.round} before its contributions",
                               {"rounds_completed": state.rounds_completed})
            require_participants(state, list(command.values))
            if _contributions_recorded(session, state, command.round):
                raise Conflict(f"the contributions to round {command.round} of task '{name}' "
                               "are already recorded")
            event = ContributionsAssessed(**command.model_dump())
            return self._append_and_view(session, state, ctx, event)

        return self._run(ctx, f"contributions:{name}", command.model_dump(mode="json"), decide)


def _contributions_recorded(session: Session, state: TaskState, round_no: int) -> bool:
    """Whether the task's log already values the round (one assessment per round)."""
    return any(r.type == ContributionsAssessed.type_name() and r.data.get("round") == round_no
               for r in session.read_stream(task_stream(state.task_id)))
