"""RL maths of cosmojax: vector-reward advantages and policy losses.

`advantages` turns rewards R[N, K] (NaN = objective not applicable) into advantages;

`losses` holds the contract with the fused kernel (kernels/): `PolicyLossConfig`,
`policy_loss_from_logprobs`, `token_logprobs_reference`, `multiobjective_pg_loss_reference`.
"""

from cosmojax.rl.advantages import ADVANTAGE_ESTIMATORS
from cosmojax.rl.advantages import MODES
from cosmojax.rl.advantages import AdvantageConfig
from cosmojax.rl.advantages import AdvantageResult
from cosmojax.rl.advantages import compute_advantages
from cosmojax.rl.advantages import contiguous_group_ids
from cosmojax.rl.advantages import group_stats
from cosmojax.rl.advantages import overlong_penalty
from cosmojax.rl.advantages import reinforce_pp_token_advantages
from cosmojax.rl.losses import AGGREGATIONS
from cosmojax.rl.losses import KL_ESTIMATORS
from cosmojax.rl.losses import POLICY_LOSSES
from cosmojax.rl.losses import PolicyLossConfig
from cosmojax.rl.losses import aggregate
from cosmojax.rl.losses import kl_penalty
from cosmojax.rl.losses import multiobjective_pg_loss_reference
from cosmojax.rl.losses import policy_drift
from cosmojax.rl.losses import policy_loss_from_logprobs
from cosmojax.rl.losses import token_logprobs_reference
from cosmojax.rl.objectives import combine_objectives
