"""The counterparts that are not importable here, written out in torch ops as their
libraries write them: torchvision's focal and box losses (torchvision is optional, and
its wheel may not match the installed torch), the pinball loss (torch has none;
scikit-learn's ``mean_pinball_loss`` is its NumPy form), torchrl's reward-model loss
(Bradley-Terry) and TRL's DPOTrainer.dpo_loss (neither package is installed).

``FORMULAS`` maps a registry entry's counterpart (``Torch.counterpart``, or its adapter's
name where there is none) to a function with the adapter's keyword arguments, so the
generic adapter table (test_registry.py) compares every entry with something. The
entries' own tests use the same functions.
"""


def torch_focal(torch, x, y, alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss (reduction none), written out in torch ops."""
    functional = torch.nn.functional
    p = torch.sigmoid(x)
    ce = functional.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss


def torch_box_loss(torch, kind, boxes1, boxes2, eps=1e-7, reduction="none"):
    """torchvision.ops.{generalized,distance,complete}_box_iou_loss as torchvision writes
    them (torchvision is not importable here): _loss_inter_union, _diou_iou_loss (which
    complete_box_iou_loss calls without its eps), and the reductions."""
    def inter_union(b1, b2):
        x1, y1, x2, y2 = b1.unbind(dim=-1)
        x1g, y1g, x2g, y2g = b2.unbind(dim=-1)
        xkis1, ykis1 = torch.max(x1, x1g), torch.max(y1, y1g)
        xkis2, ykis2 = torch.min(x2, x2g), torch.min(y2, y2g)
        intsctk = torch.zeros_like(xkis1)
        mask = (ykis2 > ykis1) & (xkis2 > xkis1)
        intsctk[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
        unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
        return intsctk, unionk

    def diou_iou(b1, b2, eps=1e-7):
        intsct, union = inter_union(b1, b2)
        iou = intsct / (union + eps)
        x1, y1, x2, y2 = b1.unbind(dim=-1)
        x1g, y1g, x2g, y2g = b2.unbind(dim=-1)
        xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
        xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
        diagonal_distance_squared = ((xc2 - xc1) ** 2) + ((yc2 - yc1) ** 2) + eps
        x_p, y_p = (x2 + x1) / 2, (y2 + y1) / 2
        x_g, y_g = (x1g + x2g) / 2, (y1g + y2g) / 2
        centers_distance_squared = ((x_p - x_g) ** 2) + ((y_p - y_g) ** 2)
        return 1 - iou + (centers_distance_squared / diagonal_distance_squared), iou

    if kind == "giou":
        intsctk, unionk = inter_union(boxes1, boxes2)
        iouk = intsctk / (unionk + eps)
        x1, y1, x2, y2 = boxes1.unbind(dim=-1)
        x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
        xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
        xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
        area_c = (xc2 - xc1) * (yc2 - yc1)
        miouk = iouk - ((area_c - unionk) / (area_c + eps))
        loss = 1 - miouk
    elif kind == "diou":
        loss, _ = diou_iou(boxes1, boxes2, eps)
    else:
        diou_loss, iou = diou_iou(boxes1, boxes2)
        x1, y1, x2, y2 = boxes1.unbind(dim=-1)
        x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
        w_pred, h_pred = x2 - x1, y2 - y1
        w_gt, h_gt = x2g - x1g, y2g - y1g
        v = (4 / (torch.pi**2)) * torch.pow((torch.atan(w_gt / h_gt) - torch.atan(w_pred / h_pred)), 2)
        with torch.no_grad():
            alpha = v / (1 - iou + v + eps)
        loss = diou_loss + alpha * v
    if reduction == "mean":
        loss = loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


def _reduce(loss, reduction):
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    import torch

    return _reduce(torch_focal(torch, inputs, targets, alpha, gamma), reduction)


def pinball_loss(input, target, quantile=0.5, reduction="mean"):
    """max(q r, (q - 1) r), r = target - input, with torch.maximum (whose backward
    splits a tie evenly)."""
    import torch

    q = torch.as_tensor(quantile, dtype=input.dtype)
    r = target - input
    return _reduce(torch.maximum(q * r, (q - 1) * r), reduction)


def bradley_terry(chosen, rejected, margin=0.0, reduction="mean"):
    """torchrl's reward_model_loss and TRL's RewardTrainer: -logsigmoid of the reward
    difference less the pair's margin."""
    import torch

    return _reduce(-torch.nn.functional.logsigmoid(chosen - rejected - margin), reduction)


def dpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1,
        loss_type="sigmoid", label_smoothing=0.0, reduction="mean"):
    """TRL's DPOTrainer.dpo_loss for loss_type sigmoid (cDPO's label smoothing), hinge
    and ipo, in torch ops as TRL writes them."""
    import torch

    logsigmoid = torch.nn.functional.logsigmoid
    pi_logratios = policy_chosen - policy_rejected
    ref_logratios = reference_chosen - reference_rejected
    logits = pi_logratios - ref_logratios
    if loss_type == "sigmoid":
        losses = (-logsigmoid(beta * logits) * (1 - label_smoothing)
                  - logsigmoid(-beta * logits) * label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:
        losses = (logits - 1 / (2 * beta)) ** 2
    return _reduce(losses, reduction)


def _box(kind):
    def loss(boxes1, boxes2, reduction="none", eps=1e-7):
        import torch

        return torch_box_loss(torch, kind, boxes1, boxes2, eps=eps, reduction=reduction)
    return loss


FORMULAS = {
    "torchvision.ops.sigmoid_focal_loss": sigmoid_focal_loss,
    "torchvision.ops.generalized_box_iou_loss": _box("giou"),
    "torchvision.ops.distance_box_iou_loss": _box("diou"),
    "torchvision.ops.complete_box_iou_loss": _box("ciou"),
    "pinball_loss": pinball_loss,
    "bradley_terry": bradley_terry,
    "dpo": dpo,
}
