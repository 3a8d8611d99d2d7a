"""One item's generation: the semantics at the heart of VQA Curator.

Multiple choice takes two model calls. The first asks for the correct answer (and a short
explanation); the second sends the image, the question and that answer and asks for N
plausible but wrong options, N drawn from a configurable range. The distractors are
cleaned (trimmed, de-duplicated case-insensitively, dropped when equal to, contained in or
containing the correct answer); fewer than the minimum left is a `format` error of the
distractor step. Correct answer and distractors are shuffled with a recorded seed; the
correct letter is where the answer landed. Fill-in-blank takes one call.

N and the shuffle seed come from a hash of the item (image, question, id) and its
regeneration number, so a restarted run sends byte-identical requests: their ledger keys
match and nothing already answered is paid for again. Every call goes through the ledger
view first; a response is recorded as successful only once it parsed into something usable.

A regeneration carries the curator's reason and the previous answer into the prompt;
scope `distractors` keeps the current answer and redoes only the distractor call.

Errors: 401/403 (`AuthenticationError`) propagate, the run must stop. 400/404/413/422 end
the item at once. Anything else (format, timeouts after the client's own retries, 5xx,
truncated output...) costs one attempt; the item fails when `attempt_limit` is spent.

A finished multiple-choice item then gets the run's model-based checks
(`vqa_engine.model_checks`), through the same client, gate and ledger (role `check`). A
check that fails or reads no letter never costs the item: it becomes the flag
`check_incomplete`, and its error class is counted with the run's errors.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from db.models import QuestionType, RegenerateScope
from vqa_engine.client import ChatRequest, ChatResponse
from vqa_engine.errors import (
    AuthenticationError,
    BadRequestError,
    EndpointError,
    FormatError,
    NotFoundError,
    PayloadTooLargeError,
)
from vqa_engine.ledger import LedgerRecord, Role, request_key
from vqa_engine.model_checks import (
    CHECK_ROLE,
    CHECK_TEMPERATURE,
    NO_CHECKS,
    CheckAnswer,
    CheckAsk,
    ModelChecks,
    check_asks,
    judge,
    original_letter,
    parse_choice,
    rotate_options,
)
from vqa_engine.parsing import parse_answer, parse_distractors
from vqa_engine.prompts import DEFAULT_PROMPTS, PromptSet, answer_prompt, distractor_prompt
from vqa_engine.records import LETTERS, compose_full_question

T = TypeVar("T")

PERMANENT_ERRORS: tuple[type[EndpointError], ...] = (
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
)
MESSAGE_LIMIT = 2000


class Step:
    """Which call of an item failed; stored as `error_step`."""

    ANSWER = "answer"
    DISTRACTORS = "distractors"
    IMAGE = "image"
    CHECK = "check"


@dataclass(frozen=True)
class GenerationSettings:
    """How items are generated. Every field is part of the run's stored configuration."""

    distractors_min: int = 2
    distractors_max: int = 4
    temperature: float = 0.7
    max_tokens: int = 1024
    attempt_limit: int = 3
    prompts: PromptSet = DEFAULT_PROMPTS

    def __post_init__(self) -> None:
        if not 1 <= self.distractors_min <= self.distractors_max <= len(LETTERS) - 1:
            raise ValueError(
                f"distractor range {self.distractors_min}..{self.distractors_max} is invalid; "
                f"use 1 <= min <= max <= {len(LETTERS) - 1}"
            )
        if self.attempt_limit < 1:
            raise ValueError(f"attempt_limit must be at least 1, got {self.attempt_limit}")

    @property
    def params(self) -> dict[str, Any]:
        """The sampling parameters sent with every request (and hashed into its key)."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}


# ---------------------------------------------------------------- pure helpers


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def clean_distractors(candidates: Sequence[str], correct: str) -> list[str]:
    """Trim, drop duplicates (case-insensitive) and anything overlapping the correct answer."""
    answer = _normalized(correct)
    seen: set[str] = set()
    kept: list[str] = []
    for candidate in candidates:
        text = str(candidate).strip()
        key = _normalized(text)
        if not key or key in seen:
            continue
        if answer and (key == answer or key in answer or answer in key):
            continue
        seen.add(key)
        kept.append(text)
    return kept


def shuffle_options(correct: str, distractors: Sequence[str], seed: int) -> tuple[dict[str, str], str]:
    """Shuffle the correct answer among the distractors; returns ({"A": ...}, correct letter)."""
    entries = [correct, *distractors]
    if len(entries) > len(LETTERS):
        raise ValueError(f"{len(entries)} options do not fit the letters A..Z")
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)
    options = {LETTERS[position]: entries[index] for position, index in enumerate(order)}
    return options, LETTERS[order.index(0)]


def item_seed(image_sha256: str, question: str, external_id: str, regeneration: int) -> int:
    """A stable 63-bit seed for one item at one regeneration."""
    material = "\x1f".join((image_sha256, question, external_id, str(regeneration)))
    return int.from_bytes(hashlib.sha256(material.encode("utf-8")).digest()[:8], "big") >> 1


def distractor_count(seed: int, settings: GenerationSettings) -> int:
    return random.Random(seed).randint(settings.distractors_min, settings.distractors_max)


def shuffle_seed_for(seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"shuffle:{seed}".encode()).digest()[:8], "big") >> 1


def safe_message(exc: BaseException) -> str:
    """An error message fit to store: ours verbatim, anything else by type only."""
    if isinstance(exc, (EndpointError, FormatError)):
        return str(exc)[:MESSAGE_LIMIT]
    return f"{type(exc).__name__}: {str(exc)[:MESSAGE_LIMIT]}"


# ---------------------------------------------------------------- inputs and outputs


class ChatCompleter(Protocol):
    async def complete(self, request: ChatRequest) -> ChatResponse: ...


class RequestGate(Protocol):
    """Bounds requests sent but not yet recorded (the worker's `RequestBudget`)."""

    async def enter(self) -> None: ...  # before a request is sent

    def leave(self) -> None: ...  # the request ended without a ledger record


@dataclass
class ItemJob:
    """Everything needed to generate one item, loaded by the worker when it claims the item."""

    item_id: int
    external_id: str
    question: str
    question_type: QuestionType
    image_sha256: str
    load_image: Callable[[], Awaitable[bytes]]
    regeneration: int = 0
    regenerate_scope: RegenerateScope | None = None
    regenerate_reason: str | None = None
    previous_answer: str | None = None
    previous_explanation: str | None = None
    previous_distractors: list[str] = field(default_factory=list)
    attempts_used: int = 0
    known: dict[str, str] = field(default_factory=dict)  # ledger key -> successful text
    seed: int | None = None  # item_seed, computed once
    answer_call: tuple[str, str] | None = None  # (prompt, ledger key), computed once

    @property
    def distractors_only(self) -> bool:
        return (
            self.regeneration > 0
            and self.regenerate_scope is RegenerateScope.DISTRACTORS
            and self.question_type is QuestionType.MULTIPLE_CHOICE
            and bool(self.previous_answer)
        )


@dataclass
class GenerationResult:
    answer: str
    explanation: str | None
    distractors: list[str]
    options: dict[str, str]
    correct_letter: str | None
    shuffle_seed: int | None
    full_question: str
    raw_answer: str | None
    raw_distractors: str | None
    answer_method: str | None = None  # parsing.ParsedAnswer.method; None when reused
    distractor_method: str | None = None  # parsing.ParsedOptions.method
    expected_options: int | None = None  # correct answer + distractors asked for
    check_flags: dict[str, dict[str, str]] = field(default_factory=dict)  # model_checks.judge


@dataclass
class AttemptFailure:
    error_type: str
    error_step: str
    error_message: str
    raw_answer: str | None = None
    raw_distractors: str | None = None
    answer: str | None = None


@dataclass
class ItemOutcome:
    """What one execution of an item produced; the worker stores it in one transaction."""

    item_id: int
    result: GenerationResult | None = None
    failures: list[AttemptFailure] = field(default_factory=list)
    attempts: int = 0
    permanent: bool = False
    requests: int = 0
    ledger_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    model: str | None = None
    prompt_version: str | None = None
    check_errors: list[str] = field(default_factory=list)  # error classes of failed checks

    @property
    def ok(self) -> bool:
        return self.result is not None

    @property
    def last_failure(self) -> AttemptFailure | None:
        return self.failures[-1] if self.failures else None


class _StepFailed(Exception):
    def __init__(self, failure: AttemptFailure, *, permanent: bool) -> None:
        super().__init__(failure.error_message)
        self.failure = failure
        self.permanent = permanent


# ---------------------------------------------------------------- the generator


class ItemGenerator:
    """Generates items with one client; records every model response through `record`."""

    def __init__(
        self,
        client: ChatCompleter,
        settings: GenerationSettings,
        *,
        model: str,
        record: Callable[[LedgerRecord], None],
        run_id: int | None = None,
        gate: RequestGate | None = None,
        checks: ModelChecks = NO_CHECKS,
    ) -> None:
        self.client = client
        self.settings = settings
        self.checks = checks
        self.model = model
        self.record = record
        self.run_id = run_id
        self.gate = gate
        self.prompt_version = settings.prompts.version

    # -- keys, so the worker can prefetch ledger hits before anything runs

    def answer_request(self, job: ItemJob) -> tuple[str, str]:
        """(prompt, ledger key) of the item's answer call (computed once per job)."""
        if job.answer_call is None:
            job.answer_call = self._answer_request(job)
        return job.answer_call

    def _answer_request(self, job: ItemJob) -> tuple[str, str]:
        previous = job.previous_answer if job.regeneration > 0 else None
        reason = job.regenerate_reason if job.regeneration > 0 else None
        prompt = answer_prompt(
            job.question,
            job.question_type.value,
            previous_answer=previous,
            reason=reason,
            prompts=self.settings.prompts,
        )
        return prompt, self._key(Role.ANSWER, job, prompt)

    def distractor_request(self, job: ItemJob, correct: str) -> tuple[str, str, int]:
        """(prompt, ledger key, N) of the item's distractor call for a given correct answer."""
        count = distractor_count(self._seed(job), self.settings)
        regenerating = job.regeneration > 0
        prompt = distractor_prompt(
            job.question,
            correct,
            count,
            previous=(list(job.previous_distractors) or None) if regenerating else None,
            reason=job.regenerate_reason if regenerating else None,
            prompts=self.settings.prompts,
        )
        return prompt, self._key(Role.DISTRACTORS, job, prompt), count

    def _key(self, role: str, job: ItemJob, prompt: str) -> str:
        return request_key(
            role,
            self.model,
            job.image_sha256,
            prompt,
            self.settings.params if role != CHECK_ROLE else self._check_params,
            regeneration=job.regeneration,
        )

    @property
    def _check_params(self) -> dict[str, Any]:
        return {"temperature": CHECK_TEMPERATURE, "max_tokens": self.settings.max_tokens}

    def check_requests(self, job: ItemJob, options: dict[str, str]
                       ) -> list[tuple[CheckAsk, str]]:
        """(ask, ledger key) of every check request for a finished item's options.

        A blind request carries no image, yet its key holds the item's image hash, so each
        item's check is its own ledger entry even when two items share a question."""
        return [(ask, self._key(CHECK_ROLE, job, ask.prompt))
                for ask in check_asks(self.checks, job.question, options)]

    def known_check_keys(self, job: ItemJob) -> list[str]:
        """Check keys of an item whose answer and distractor responses are already in
        `job.known` (so the worker can prefetch them); empty otherwise."""
        if not self.checks.any or job.question_type is not QuestionType.MULTIPLE_CHOICE:
            return []
        if job.distractors_only:
            answer = job.previous_answer or ""
        else:
            text = job.known.get(self.answer_request(job)[1])
            if text is None:
                return []
            try:
                answer = parse_answer(text).answer
            except FormatError:
                return []
        _prompt, key, count = self.distractor_request(job, answer)
        text = job.known.get(key)
        if text is None:
            return []
        try:
            distractors = self._distractor_parser(answer, count, [])(text)
        except FormatError:
            return []
        options, _letter = shuffle_options(answer, distractors, shuffle_seed_for(self._seed(job)))
        return [key for _ask, key in self.check_requests(job, options)]

    @staticmethod
    def _seed(job: ItemJob) -> int:
        if job.seed is None:
            job.seed = item_seed(job.image_sha256, job.question, job.external_id,
                                 job.regeneration)
        return job.seed

    # -- running an item

    async def generate(self, job: ItemJob) -> ItemOutcome:
        outcome = ItemOutcome(
            item_id=job.item_id, model=self.model, prompt_version=self.prompt_version
        )
        image: list[bytes] = []

        async def image_bytes() -> bytes:
            if not image:
                image.append(await job.load_image())
            return image[0]

        while job.attempts_used + outcome.attempts < self.settings.attempt_limit:
            outcome.attempts += 1
            try:
                result = await self._attempt(job, outcome, image_bytes)
            except _StepFailed as failed:
                outcome.failures.append(failed.failure)
                if failed.permanent:
                    outcome.permanent = True
                    return outcome
                continue
            if self.checks.any and result.correct_letter is not None:
                result.check_flags = await self._check(job, outcome, result, image_bytes)
            outcome.result = result
            return outcome
        if not outcome.failures:
            outcome.failures.append(
                AttemptFailure(
                    "attempt_limit",
                    Step.ANSWER,
                    f"attempt limit {self.settings.attempt_limit} already reached; "
                    "raise attempt_limit or regenerate the item to try again",
                )
            )
        return outcome

    async def _attempt(
        self,
        job: ItemJob,
        outcome: ItemOutcome,
        image_bytes: Callable[[], Awaitable[bytes]],
    ) -> GenerationResult:
        answer_method: str | None = None
        if job.distractors_only:
            assert job.previous_answer is not None
            answer, explanation, raw_answer = job.previous_answer, job.previous_explanation, None
        else:
            prompt, key = self.answer_request(job)
            parsed, raw_answer = await self._call(
                job, outcome, image_bytes, Role.ANSWER, Step.ANSWER, prompt, key, parse_answer
            )
            answer, explanation = parsed.answer, parsed.explanation
            answer_method = parsed.method

        if job.question_type is not QuestionType.MULTIPLE_CHOICE:
            return GenerationResult(
                answer=answer,
                explanation=explanation,
                distractors=[],
                options={},
                correct_letter=None,
                shuffle_seed=None,
                full_question=job.question,
                raw_answer=raw_answer,
                raw_distractors=None,
                answer_method=answer_method,
            )

        prompt, key, count = self.distractor_request(job, answer)
        methods: list[str] = []  # of each parse; the last is the one that succeeded
        parse_clean = self._distractor_parser(answer, count, methods)
        try:
            distractors, raw_distractors = await self._call(
                job, outcome, image_bytes, Role.DISTRACTORS, Step.DISTRACTORS, prompt, key,
                parse_clean,
            )
        except _StepFailed as failed:
            failed.failure.raw_answer = raw_answer
            failed.failure.answer = answer
            raise
        seed = shuffle_seed_for(self._seed(job))
        options, letter = shuffle_options(answer, distractors, seed)
        return GenerationResult(
            answer=answer,
            explanation=explanation,
            distractors=distractors,
            options=options,
            correct_letter=letter,
            shuffle_seed=seed,
            full_question=compose_full_question(job.question, options),
            raw_answer=raw_answer,
            raw_distractors=raw_distractors,
            answer_method=answer_method,
            distractor_method=methods[-1] if methods else None,
            expected_options=count + 1,
        )

    def _distractor_parser(self, answer: str, count: int, methods: list[str]
                           ) -> Callable[[str], list[str]]:
        """Parses and cleans a distractor response; appends each parse's method."""
        minimum = self.settings.distractors_min

        def parse_clean(text: str) -> list[str]:
            parsed_options = parse_distractors(text)
            methods.append(parsed_options.method)
            options = clean_distractors(parsed_options.options, answer)
            if len(options) < minimum:
                raise FormatError(
                    f"only {len(options)} usable distractor(s) for correct answer {answer!r} "
                    f"after removing duplicates and overlaps; at least {minimum} are needed",
                    raw=text,
                )
            return options[:count]

        return parse_clean

    async def _check(
        self,
        job: ItemJob,
        outcome: ItemOutcome,
        result: GenerationResult,
        image_bytes: Callable[[], Awaitable[bytes]],
    ) -> dict[str, dict[str, str]]:
        """Ask the run's checks about a finished item, one request after another; their
        flags. Never raises for a failed check (only for a refused key or cancellation)."""
        assert result.correct_letter is not None
        options = result.options
        letters = list(options)
        answers: list[CheckAnswer] = []
        for ask, key in self.check_requests(job, options):
            shown = rotate_options(options, ask.rotation)

            def parse(text: str, shown: dict[str, str] = shown, rotation: int = ask.rotation
                      ) -> str:
                return original_letter(letters, parse_choice(text, shown).letter, rotation)

            try:
                letter, _raw = await self._call(
                    job, outcome, image_bytes, CHECK_ROLE, Step.CHECK, ask.prompt, key, parse,
                    with_image=ask.with_image, temperature=CHECK_TEMPERATURE,
                )
            except _StepFailed as failed:
                error_type = failed.failure.error_type
                outcome.check_errors.append(error_type)
                # The full message is in the ledger; the flag's reason stays one short line.
                problem = ("the reply named no option letter" if error_type == "format"
                           else error_type)
                answers.append(CheckAnswer(ask.kind, ask.rotation, problem=problem))
                continue
            answers.append(CheckAnswer(ask.kind, ask.rotation, letter=letter))
        return judge(answers, result.correct_letter, len(options))

    async def _call(
        self,
        job: ItemJob,
        outcome: ItemOutcome,
        image_bytes: Callable[[], Awaitable[bytes]],
        role: str,
        step: str,
        prompt: str,
        key: str,
        parse: Callable[[str], T],
        *,
        with_image: bool = True,
        temperature: float | None = None,
    ) -> tuple[T, str]:
        known = job.known.get(key)
        if known is not None:
            try:
                parsed = parse(known)
            except FormatError:
                job.known.pop(key, None)  # stored under an older parser; ask again
            else:
                outcome.ledger_hits += 1
                return parsed, known

        try:
            jpeg = await image_bytes() if with_image else None
        except OSError as exc:
            failure = AttemptFailure(
                "image", Step.IMAGE,
                f"cannot read the prepared image {job.image_sha256[:12]}... ({exc.strerror or exc}); "
                "re-import the dataset to restore its images",
            )
            raise _StepFailed(failure, permanent=True) from None

        if self.gate is not None:
            await self.gate.enter()
        started = time.perf_counter()
        try:
            response = await self.client.complete(
                ChatRequest(
                    prompt,
                    jpeg,
                    temperature=self.settings.temperature if temperature is None else temperature,
                    max_tokens=self.settings.max_tokens,
                )
            )
        except EndpointError as exc:
            if isinstance(exc, AuthenticationError):
                self._unrecorded()
                raise
            outcome.requests += 1
            elapsed = (time.perf_counter() - started) * 1000
            outcome.latency_ms += elapsed
            message = safe_message(exc)
            self.record(
                LedgerRecord(
                    key=key, role=role, model=self.model, image_sha256=job.image_sha256, ok=False,
                    latency_ms=elapsed, error_type=exc.error_type, error_message=message,
                    run_id=self.run_id,
                )
            )
            failure = AttemptFailure(exc.error_type, step, message)
            raise _StepFailed(failure, permanent=isinstance(exc, PERMANENT_ERRORS)) from None
        except BaseException:  # cancelled (pause, cancel, shutdown) or a bug
            self._unrecorded()
            raise

        outcome.requests += 1
        outcome.retries += response.retries
        outcome.prompt_tokens += response.prompt_tokens
        outcome.completion_tokens += response.completion_tokens
        outcome.latency_ms += response.latency_ms
        entry = dict(
            key=key, role=role, model=self.model, image_sha256=job.image_sha256,
            response_text=response.text, finish_reason=response.finish_reason,
            prompt_tokens=response.prompt_tokens, completion_tokens=response.completion_tokens,
            latency_ms=response.latency_ms, run_id=self.run_id,
        )
        try:
            parsed = parse(response.text)
        except FormatError as exc:
            message = safe_message(exc)
            self.record(LedgerRecord(ok=False, error_type=exc.error_type, error_message=message,
                                     **entry))
            failure = AttemptFailure(exc.error_type, step, message)
            if step == Step.ANSWER:
                failure.raw_answer = response.text
            elif step == Step.DISTRACTORS:
                failure.raw_distractors = response.text
            raise _StepFailed(failure, permanent=False) from None
        self.record(LedgerRecord(ok=True, **entry))
        job.known[key] = response.text
        return parsed, response.text

    def _unrecorded(self) -> None:
        if self.gate is not None:
            self.gate.leave()
