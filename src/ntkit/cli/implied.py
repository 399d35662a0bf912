"""The data transform a model's weights imply (``resnet-18_pretrained``: ImageNet inputs), for
data specs written without one: ``CIFAR-10_0_2500_0_1000`` then means
``CIFAR-10_0_2500_0_1000:resize=224,normalize=imagenet``, as empirical-ntks transforms CIFAR."""

from __future__ import annotations


def implied_data(model: str, *specs: str | None) -> tuple[list[str | None], str | None]:
    """``(specs with the implied transform appended where they have none, a note saying so or None)``.

    ``None`` specs (no ``--cols``) stay ``None``; a spec with any ``:resize=``/``normalize=`` option
    of its own is kept as written (``:normalize=dataset`` turns the implication off)."""
    from ntkit.data import parse_spec
    from ntkit.models import parse_model_spec
    from ntkit.models.spec import get_family

    parsed = parse_model_spec(model)
    family = get_family(parsed.name)
    implied = None if family.implied_data is None else family.implied_data(parsed.options)
    if implied is None:
        return list(specs), None
    out: list[str | None] = []
    changed = []
    for spec in specs:
        if spec is not None and parse_spec(spec).transform is None:
            changed.append(spec)
            spec = f"{spec.strip()}:{implied}"
        out.append(spec)
    if not changed:
        return out, None
    note = (f"data: {implied} implied by model {parsed} (its weights expect ImageNet inputs) for "
            f"{', '.join(changed)}; write the data spec with its own options to change that, e.g. "
            f"{changed[0].strip()}:normalize=dataset")
    return out, note
