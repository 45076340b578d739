"""What deliberation returns: the response, its steps, and the record of how it was made."""

from __future__ import annotations

import dataclasses

from cosmojax import types

# How a step was produced.
SOURCES = ("model", "resample", "corrective_prefix", "human")
# Why a response ended.
STOP_REASONS = ("eos", "answer", "max_steps", "length")


@dataclasses.dataclass(frozen=True)
class Step:
  """One reasoning step of a response.

  Attributes:
    text: the step's text (its tokens decoded alone).
    token_ids: its tokens, as appended to the response.
    score: the step verifier's score of the partial response that ends with this step
      (NaN when no scorer was given).
    ending: how generation of the step ended (`cosmojax.inference.steps.ENDINGS`): at a
      delimiter, a final delimiter, an end-of-sequence token, or the step token budget; an
      edited step ends at "final" when its text holds a final delimiter, else "delimiter".
    source: who wrote it (`SOURCES`): the model, a resample or a corrective-prefix
      regeneration of an intervention, or a human edit.
  """

  text: str
  token_ids: tuple[int, ...]
  score: float
  ending: str
  source: str = "model"


@dataclasses.dataclass(frozen=True)
class Intervention:
  """One intervention of value-guided generation on a step scored below the threshold.

  Attributes:
    step: index of the step (0-based) in the response.
    proposed: the text of the step that triggered the action.
    action: "resample" (the step was resampled, the best candidate kept) or
      "corrective_prefix" (the step was regenerated after the corrective prefix).
    score_before: the score that triggered the action (< threshold).
    score_after: the score of the step the action produced.
    candidate_scores: "resample": the scores of the candidates compared, the triggering step
      first (the kept one is the first of the highest); "corrective_prefix": (score_after,).
  """

  step: int
  proposed: str
  action: str
  score_before: float
  score_after: float
  candidate_scores: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class HumanEdit:
  """A step that the human-in-the-loop hook replaced.

  Attributes:
    step: index of the step in the response.
    proposed: the text the model (after any intervention) proposed.
    edited: the text the hook returned, which the response holds instead.
  """

  step: int
  proposed: str
  edited: str


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One entry of a search round's pool: a new candidate or a finished beam carried over.

  Attributes:
    parent: index of the beam it extends in the previous round's kept beams (-1 in round 0,
      where every example starts from one empty response); a carried beam's own index there.
    carried: True for a finished beam carried into the pool unchanged.
    step: the new step (a carried beam: its last step).
    response: the text of the whole partial response.
    step_scores: the step scores of all its steps, in order (the last is the new step's).
    score: the aggregate of `step_scores` (`SearchConfig.aggregation`).
    stop_reason: why it is finished (`STOP_REASONS`), or "" if it would be expanded.
    duplicate: True when an earlier pool entry has the same tokens (never kept when the
      search deduplicates).
  """

  parent: int
  carried: bool
  step: Step
  response: str
  step_scores: tuple[float, ...]
  score: float
  stop_reason: str
  duplicate: bool = False


@dataclasses.dataclass(frozen=True)
class SearchRound:
  """One round of step-level search for one example.

  Attributes:
    round: the round index (= the number of steps of the pool's new candidates - 1).
    candidates: the pool, carried finished beams first, then each expanded beam's candidates.
    kept: indices into `candidates` of the beams kept, best first.
  """

  round: int
  candidates: tuple[Candidate, ...]
  kept: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class DeliberationResult:
  """The response to one example and how it was reached.

  Attributes:
    example: the example.
    response: the response text (all its tokens decoded together).
    token_ids: the response's tokens (an ending end-of-sequence token not included).
    steps: its steps; their texts concatenate to `response` (except where a multi-byte
      character straddles two steps).
    score: guided generation: the last step's score (the verifier's score of the whole
      response; NaN without a scorer); search: the aggregate score of the returned beam.
    stop_reason: why the response ended (`STOP_REASONS`).
    interventions: guided generation's interventions, in step order.
    edits: the human-in-the-loop hook's edits, in step order.
    trace: search: the rounds of this example's search; () for guided generation.
  """

  example: types.Example
  response: str
  token_ids: tuple[int, ...]
  steps: tuple[Step, ...]
  score: float
  stop_reason: str
  interventions: tuple[Intervention, ...] = ()
  edits: tuple[HumanEdit, ...] = ()
  trace: tuple[SearchRound, ...] = ()
