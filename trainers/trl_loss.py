"""TRL's loss fields (`loss_type`, `epsilon`, `delta`, ...) as a registry loss and its parameters.

With `policy_loss` unset, ThermoGRPOTrainer computes the loss TRL's GRPOTrainer would from the same GRPOConfig:
every TRL 1.16 loss type is a registry loss plus an aggregation (`loss_type` -> normalisation):

    grpo, sapo -> seq_mean_token_mean   bnpo -> token_mean   dr_grpo -> seq_mean_token_sum_norm
    dapo, cispo, vespo -> batch_token_mean   luspo -> seq_mean_token_sum

grpo, bnpo, dr_grpo, dapo and luspo are the clipped surrogate: `grpo` with token ratios, `gspo` with
`importance_sampling_level="sequence"`.
"""

from __future__ import annotations

import dataclasses

from trl import GRPOConfig

from ..errors import UserError
from ..losses import validate_loss_kwargs

AGGREGATION_OF_LOSS_TYPE = {
    "grpo": "seq_mean_token_mean",
    "sapo": "seq_mean_token_mean",
    "bnpo": "token_mean",
    "dr_grpo": "seq_mean_token_sum_norm",
    "dapo": "batch_token_mean",
    "cispo": "batch_token_mean",
    "vespo": "batch_token_mean",
    "luspo": "seq_mean_token_sum",
}
CLIPPED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")

# GRPOConfig fields that choose the policy loss or its parameters; `policy_loss` replaces all of them.
TRL_LOSS_FIELDS = (
    "loss_type",
    "epsilon",
    "epsilon_high",
    "delta",
    "sapo_temperature_pos",
    "sapo_temperature_neg",
    "vespo_k_pos",
    "vespo_lambda_pos",
    "vespo_k_neg",
    "vespo_lambda_neg",
    "importance_sampling_level",
    "use_bias_correction_kl",
)
_TRL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GRPOConfig) if f.name in TRL_LOSS_FIELDS}


def check_no_trl_loss_fields(args) -> None:
    """With `policy_loss` set, a TRL loss field off its default would be ignored: refuse it, naming both."""
    changed = [name for name in TRL_LOSS_FIELDS if getattr(args, name) != _TRL_DEFAULTS[name]]
    if changed:
        name = changed[0]
        raise UserError(
            f"policy_loss={args.policy_loss!r} and {name}={getattr(args, name)!r} both choose the policy loss: "
            "set the loss's parameters in policy_loss_kwargs, or unset policy_loss to use TRL's loss fields."
        )


def policy_loss_from_trl(args) -> tuple[str, dict]:
    """(registry loss, its parameters) computing what TRL's GRPOTrainer computes for `args`' loss fields."""
    loss_type, level = args.loss_type, args.importance_sampling_level
    if loss_type not in AGGREGATION_OF_LOSS_TYPE:
        raise UserError(f"loss_type={loss_type!r} is not a TRL loss; valid: {', '.join(AGGREGATION_OF_LOSS_TYPE)}")
    if level not in ("token", "sequence"):
        raise UserError(f"importance_sampling_level={level!r} must be 'token' or 'sequence'")
    # TRL's bias-corrected KL multiplies by the (token or sequence) ratio; it only acts when beta != 0
    sequence_ratio_matters = loss_type in ("sapo", "cispo") or (args.beta != 0.0 and args.use_bias_correction_kl)
    if level == "sequence" and loss_type not in CLIPPED_LOSS_TYPES and sequence_ratio_matters:
        raise UserError(
            f"importance_sampling_level='sequence' with loss_type={loss_type!r} has no thermorl registry loss; "
            "use importance_sampling_level='token', or loss_type='grpo' (GSPO)."
        )
    eps_high = args.epsilon if args.epsilon_high is None else args.epsilon_high
    kwargs = {"aggregation": AGGREGATION_OF_LOSS_TYPE[loss_type], "kl_bias_correction": args.use_bias_correction_kl}
    source = {}  # registry parameter -> the TRL field it comes from, for error messages
    if loss_type in CLIPPED_LOSS_TYPES:
        name = "gspo" if level == "sequence" else "grpo"
        kwargs.update(eps_low=args.epsilon, eps_high=eps_high, delta=args.delta)
        source = {"eps_low": "epsilon", "eps_high": "epsilon_high", "delta": "delta"}
    elif loss_type == "sapo":
        name = "sapo"
        kwargs.update(tau_pos=args.sapo_temperature_pos, tau_neg=args.sapo_temperature_neg)
        source = {"tau_pos": "sapo_temperature_pos", "tau_neg": "sapo_temperature_neg"}
    elif loss_type == "cispo":
        name = "cispo"
        kwargs.update(ratio_cap=eps_high)
        source = {"ratio_cap": "epsilon_high"}
    else:
        name = "vespo"
        kwargs.update(
            k_pos=args.vespo_k_pos,
            lambda_pos=args.vespo_lambda_pos,
            k_neg=args.vespo_k_neg,
            lambda_neg=args.vespo_lambda_neg,
        )
        source = {key: f"vespo_{key}" for key in ("k_pos", "lambda_pos", "k_neg", "lambda_neg")}
    try:
        return name, validate_loss_kwargs(name, kwargs)
    except ValueError as error:
        named = [field for key, field in source.items() if f"'{key}'" in str(error)]
        fields = "".join(f", {field}={getattr(args, field)!r}" for field in named)
        raise UserError(f"loss_type={loss_type!r}{fields}: {error}") from None
