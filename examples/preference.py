"""Preference training on the CPU with fastloss: a reward model and a DPO policy.

Two stages of learning from human preferences, on synthetic data, in a few seconds:

1. A reward model (a small MLP over feature vectors) is trained on preference pairs with
   the Bradley-Terry loss, ``fastloss.torch.BradleyTerryLoss``. The pairs come from a
   hidden linear reward: of two items, the one with the higher hidden reward (plus
   logistic noise: the Bradley-Terry model itself) is "chosen". The model should learn
   to rank held-out pairs.
2. A tiny language model (an embedding and a linear head over 24 tokens, conditioned
   on the previous token) is tuned with DPO against a frozen copy of itself: chosen
   answers use even tokens, rejected ones odd. Each step goes from logits to the loss
   through fastloss: token log-probabilities (``fastloss.torch.cross_entropy``,
   reduction "none"), per-sequence sums over the answer's tokens
   (``fastloss.torch.sequence_log_probs``) and ``fastloss.torch.dpo``.

Every loss fastloss computes is checked against its plain torch formula (torchrl's
reward-model loss, TRL's concatenated forward and ``dpo_loss``) on the same tensors: the
loss, and the gradients of the parameters on the first step. The script exits with
status 1 if a check fails.

    python examples/preference.py
    python examples/preference.py --steps 300 --dpo-steps 40 --loss-type ipo
"""
import argparse
import sys
import time

import torch
import torch.nn.functional as F

import fastloss.torch as FL


def check(condition, message):
    print(("check: " if condition else "FAILED: ") + message)
    if not condition:
        sys.exit(1)


def close(ours, theirs, rtol):
    """Whether every value of ``ours`` is within rtol of ``theirs`` (relative to the
    largest of theirs, so that values near 0 compare on the scale of the rest)."""
    scale = theirs.abs().max().clamp_min(1e-30)
    return bool(((ours - theirs).abs() <= rtol * scale).all())


# ----------------------------------------------------------------------------------------
# 1. A reward model on preference pairs (Bradley-Terry)
# ----------------------------------------------------------------------------------------

def preference_pairs(generator, n_pairs, dim, hidden):
    """Pairs of items (features) and which of each pair was preferred: the item with
    the higher hidden reward wins with the Bradley-Terry probability sigmoid(r_a - r_b)."""
    a = torch.randn(n_pairs, dim, generator=generator)
    b = torch.randn(n_pairs, dim, generator=generator)
    p_a = torch.sigmoid(3.0 * (a - b) @ hidden)
    a_wins = torch.rand(n_pairs, generator=generator) < p_a
    chosen = torch.where(a_wins[:, None], a, b)
    rejected = torch.where(a_wins[:, None], b, a)
    return chosen, rejected


def torchrl_reward_loss(rewards_chosen, rewards_rejected):
    """torchrl's reward_model_loss, as it writes it."""
    return -F.logsigmoid(rewards_chosen - rewards_rejected).mean()


def train_reward_model(args):
    generator = torch.Generator().manual_seed(args.seed)
    dim = 16
    hidden = torch.randn(dim, generator=generator)
    chosen, rejected = preference_pairs(generator, args.pairs, dim, hidden)
    test_chosen, test_rejected = preference_pairs(generator, 2000, dim, hidden)
    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = FL.BradleyTerryLoss()
    started = time.perf_counter()
    for step in range(args.steps):
        batch = torch.randint(0, args.pairs, (256,), generator=generator)
        rewards_chosen = model(chosen[batch]).squeeze(-1)
        rewards_rejected = model(rejected[batch]).squeeze(-1)
        loss = criterion(rewards_chosen, rewards_rejected)
        expected = torchrl_reward_loss(rewards_chosen, rewards_rejected)
        if step == 0:
            ours = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
            theirs = torch.autograd.grad(expected, list(model.parameters()), retain_graph=True)
            check(all(close(o, t, 1e-5) for o, t in zip(ours, theirs)),
                  "bradley_terry's parameter gradients equal torchrl's formula's on step 0")
        if not close(loss.detach(), expected.detach(), 1e-5):
            check(False, f"bradley_terry's loss {loss.item():.6f} on step {step} is "
                         f"torchrl's formula's {expected.item():.6f}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        margin = model(test_chosen).squeeze(-1) - model(test_rejected).squeeze(-1)
        accuracy = (margin > 0).float().mean().item()
        best = ((test_chosen - test_rejected) @ hidden > 0).float().mean().item()
    print(f"reward model: {args.steps} steps in {time.perf_counter() - started:.2f} s, last "
          f"loss {loss.item():.4f}; held-out pairs ranked right: {accuracy:.3f} (the hidden "
          f"reward itself: {best:.3f})")
    check(True, f"bradley_terry's loss equals torchrl's formula's on all {args.steps} steps")
    check(accuracy > 0.9 * best, "the reward model ranks held-out pairs nearly as well as "
                                 "the hidden reward")


# ----------------------------------------------------------------------------------------
# 2. A DPO step on a tiny policy
# ----------------------------------------------------------------------------------------

class TinyLM(torch.nn.Module):
    """Next-token logits from the previous token: an embedding and a linear head."""

    def __init__(self, vocab, width):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, tokens):
        return self.head(torch.tanh(self.embed(tokens)))


def answers(generator, n, prompt_length, length, vocab, parity):
    """Sequences of a random prompt and an answer of tokens of one parity; the loss mask
    covers the answer (the predicted tokens after the prompt)."""
    prompt = torch.randint(0, vocab, (n, prompt_length), generator=generator)
    answer = 2 * torch.randint(0, vocab // 2, (n, length - prompt_length),
                               generator=generator) + parity
    sequence = torch.cat([prompt, answer], dim=1)
    mask = torch.zeros(n, length - 1, dtype=torch.bool)
    mask[:, prompt_length - 1:] = True
    return sequence, mask


def fastloss_sequence_logps(model, sequence, mask, average):
    """Token log-probabilities by fastloss's cross-entropy (its negation, per token),
    summed over the answer by sequence_log_probs: logits to (B,) in two kernels."""
    logits = model(sequence[:, :-1])                         # (B, T - 1, V)
    token_logps = -FL.cross_entropy(logits.transpose(1, 2), sequence[:, 1:],
                                    reduction="none")
    return FL.sequence_log_probs(token_logps, mask, average=average)


def trl_sequence_logps(model, sequence, mask, average):
    """TRL's concatenated forward: gather the labels' log-softmax, mask, sum."""
    logits = model(sequence[:, :-1])
    per_token = torch.gather(logits.log_softmax(-1), 2, sequence[:, 1:].unsqueeze(2)).squeeze(2)
    total = (per_token * mask).sum(-1)
    return total / mask.sum(-1) if average else total


def trl_dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta,
                 loss_type, label_smoothing):
    """TRL's DPOTrainer.dpo_loss (sigmoid, hinge, ipo), as it writes them."""
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    if loss_type == "sigmoid":
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  - F.logsigmoid(-beta * logits) * label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:
        losses = (logits - 1 / (2 * beta)) ** 2
    return losses.mean()


def train_dpo(args):
    generator = torch.Generator().manual_seed(args.seed + 1)
    vocab, length, prompt_length, n = 24, 12, 4, 64
    torch.manual_seed(args.seed)
    policy = TinyLM(vocab, 16)
    reference = TinyLM(vocab, 16)
    reference.load_state_dict(policy.state_dict())
    reference.requires_grad_(False)
    chosen, chosen_mask = answers(generator, n, prompt_length, length, vocab, parity=0)
    rejected, rejected_mask = answers(generator, n, prompt_length, length, vocab, parity=1)
    sequences = torch.cat([chosen, rejected])
    masks = torch.cat([chosen_mask, rejected_mask])
    average = args.loss_type == "ipo"  # TRL averages the log-probabilities for IPO
    smoothing = args.label_smoothing if args.loss_type == "sigmoid" else 0.0
    options = dict(beta=args.beta, loss_type=args.loss_type, label_smoothing=smoothing)
    with torch.no_grad():
        reference_logps = fastloss_sequence_logps(reference, sequences, masks, average)
        check(close(reference_logps, trl_sequence_logps(reference, sequences, masks, average),
                    1e-5), "the reference's sequence log-probabilities equal TRL's "
                           "concatenated forward's")
    optimizer = torch.optim.Adam(policy.parameters(), lr=5e-2)
    started = time.perf_counter()
    losses = []
    def dpo_loss(sequence_logps):
        policy_logps = sequence_logps(policy, sequences, masks, average)
        return (FL.dpo if sequence_logps is fastloss_sequence_logps else trl_dpo_loss)(
            *policy_logps.split(n), *reference_logps.split(n), **options)

    # the gradients of one step by both, each from its own forward (fastloss's
    # cross-entropy hands its gradient to the first backward)
    ours = torch.autograd.grad(dpo_loss(fastloss_sequence_logps), list(policy.parameters()))
    theirs = torch.autograd.grad(dpo_loss(trl_sequence_logps), list(policy.parameters()))
    check(all(close(o, t, 1e-4) for o, t in zip(ours, theirs)),
          f"dpo ({args.loss_type}) from logits: the policy's gradients equal TRL's")
    for step in range(args.dpo_steps):
        loss = dpo_loss(fastloss_sequence_logps)
        with torch.no_grad():
            expected = dpo_loss(trl_sequence_logps)
        if not close(loss.detach(), expected.detach(), 1e-5):
            check(False, f"dpo's loss {loss.item():.6f} on step {step} is TRL's "
                         f"{expected.item():.6f}")
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        policy_logps = fastloss_sequence_logps(policy, sequences, masks, average)
        chosen_reward = args.beta * (policy_logps[:n] - reference_logps[:n])
        rejected_reward = args.beta * (policy_logps[n:] - reference_logps[n:])
        reward_accuracy = (chosen_reward > rejected_reward).float().mean().item()
    print(f"dpo ({args.loss_type}, beta {args.beta}): {args.dpo_steps} steps in "
          f"{time.perf_counter() - started:.2f} s, loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
          f"implicit reward accuracy {reward_accuracy:.3f}")
    check(True, f"dpo's loss equals TRL's dpo_loss on all {args.dpo_steps} steps")
    check(losses[-1] < losses[0] and reward_accuracy > 0.9,
          "DPO moved the policy toward the chosen answers")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="reward-model steps")
    parser.add_argument("--pairs", type=int, default=4096, help="training pairs")
    parser.add_argument("--dpo-steps", type=int, default=25)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--loss-type", choices=("sigmoid", "hinge", "ipo"), default="sigmoid")
    parser.add_argument("--label-smoothing", type=float, default=0.1,
                        help="for the sigmoid loss (conservative DPO)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest for torch's side
    train_reward_model(args)
    train_dpo(args)


if __name__ == "__main__":
    main()
