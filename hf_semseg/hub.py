"""Hub access shared by the converters and the training scripts: whether ``--push_to_hub`` can work, checked before
any work is done, so that a run that cannot push fails in its first second with one line of advice instead of after
hours of training or conversion."""


class HubAccessError(ValueError):
    """``--push_to_hub`` cannot work here; the message is one line saying why and what to do."""


def check_hub_access(repo_id: str, token: str | None = None, task: str = "convert") -> str:
    """Checks, before any work, that ``repo_id`` can be pushed to (a one-line :class:`HubAccessError` saying what to
    do otherwise; ``task`` names the work in the advice, "convert" or "train"): the Hub is not switched off
    (``HF_HUB_OFFLINE``), there is a token (``token``, else ``huggingface_hub.get_token``),
    and ``HfApi().whoami`` says it can write there (role ``write``, or a fine-grained token with ``repo.write`` on the
    repository's namespace or on the repository); a failing ``whoami`` is reported as the Hub being out of reach.
    ``repo_id`` itself is checked first with the client's own rule (``huggingface_hub.utils.validate_repo_id``:
    ``name`` or ``namespace/name``, letters, digits, ``-``, ``_``, ``.``, at most 96 characters): a training run's
    default, the output folder's name, can hold a space, which the no-trainer script's ``create_repo`` refused after
    the training.
    Returns the token."""
    import huggingface_hub
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        if not isinstance(repo_id, str):
            raise HFValidationError(f"a repository id is a string, got {type(repo_id).__name__}")
        validate_repo_id(repo_id)
    except HFValidationError as error:
        detail = (str(error).strip().splitlines() or [""])[0]
        advice = "; name one with --hub_model_id" if task == "train" else ""
        raise HubAccessError(f"--push_to_hub: {repo_id!r} is not a Hub repository id: {detail}{advice}") from error
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise HubAccessError(
            "--push_to_hub: the Hub is switched off here (HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE to push, or "
            f"{task} without --push_to_hub"
        )
    token = token or huggingface_hub.get_token()
    if token is None:
        raise HubAccessError(
            "--push_to_hub: no Hugging Face token found; run `hf auth login` (or `huggingface-cli login`) or set "
            "HF_TOKEN"
        )
    try:
        info = huggingface_hub.HfApi().whoami(token=token)
    except Exception as error:  # network errors, HTTP errors (an expired or revoked token), ...
        detail = (str(error).strip().splitlines() or [""])[0]
        raise HubAccessError(
            f"--push_to_hub: cannot reach the Hub to check the token ({type(error).__name__}: {detail}); check the "
            f"network connection (and HF_ENDPOINT) and that the token is valid, or {task} without --push_to_hub"
        ) from error
    access = (info.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    name = f"token {access['displayName']!r}" if access.get("displayName") else "token"
    if role == "read":
        raise HubAccessError(
            f"--push_to_hub {repo_id}: the {name} of {info.get('name')} is read-only; use a token with write access "
            "(https://huggingface.co/settings/tokens) through `hf auth login` or HF_TOKEN"
        )
    if role == "fineGrained":
        namespace = repo_id.split("/")[0] if "/" in repo_id else info.get("name")
        scopes = (access.get("fineGrained") or {}).get("scoped") or []
        if not any(
            "repo.write" in (scope.get("permissions") or [])
            and (
                (
                    (scope.get("entity") or {}).get("type") in ("user", "org")
                    and scope["entity"].get("name") == namespace
                )
                or ((scope.get("entity") or {}).get("type") == "model" and scope["entity"].get("name") == repo_id)
            )
            for scope in scopes
        ):
            raise HubAccessError(
                f"--push_to_hub {repo_id}: the fine-grained {name} has no write permission on {namespace} or "
                f"{repo_id}; use a token with write access (https://huggingface.co/settings/tokens) through "
                "`hf auth login` or HF_TOKEN"
            )
    return token
