"""Hub access shared by the converters and the training scripts: whether ``--push_to_hub`` can work, checked before
any work is done, so that a run that cannot push fails in its first second with one line of advice instead of after
hours of training or conversion."""


class HubAccessError(ValueError):
    """``--push_to_hub`` cannot work here; the message is one line saying why and what to do."""


def check_hub_access(repo_id: str, token: str | None = None, task: str = "convert") -> str:
    """Checks, before any work, that ``repo_id`` can be pushed to (a one-line :class:`HubAccessError` saying what to
    do otherwise; ``task`` names the work in the advice, "convert" or "train"): the Hub is not switched off
    (``HF_HUB_OFFLINE``), there is a token (``token``, else ``huggingface_hub.get_token``),
    and ``HfApi().whoami`` says it can write there: not a read-only token; a fine-grained token with ``repo.write``
    on the repository's namespace or on the repository; any other token only in its owner's namespace or that of an
    organisation where the owner writes (role ``admin``, ``write`` or ``contributor``, or no role listed). A repository
    id without a namespace is the token owner's. Where ``whoami`` does not say (no token role, no owner name), the
    token is accepted and the upload has the last word. A failing ``whoami`` is reported as the Hub being out of reach.
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
    user = info.get("name")
    if role == "read":
        raise HubAccessError(
            f"--push_to_hub {repo_id}: the {name} of {user} is read-only; use a token with write access "
            "(https://huggingface.co/settings/tokens) through `hf auth login` or HF_TOKEN"
        )
    # a repository id without a namespace is created in the token owner's (huggingface_hub's rule)
    namespace = repo_id.split("/")[0] if "/" in repo_id else user
    full_id = repo_id if "/" in repo_id or not user else f"{user}/{repo_id}"
    if role == "fineGrained":
        scopes = (access.get("fineGrained") or {}).get("scoped") or []
        if not any(
            "repo.write" in ((scope or {}).get("permissions") or [])
            and (
                (
                    ((scope or {}).get("entity") or {}).get("type") in ("user", "org")
                    and _same_name(scope["entity"].get("name"), namespace)
                )
                or (
                    ((scope or {}).get("entity") or {}).get("type") == "model"
                    and _same_name(scope["entity"].get("name"), full_id)
                )
            )
            for scope in scopes
        ):
            raise HubAccessError(
                f"--push_to_hub {repo_id}: the fine-grained {name} has no write permission on {namespace} or "
                f"{full_id}; use a token with write access (https://huggingface.co/settings/tokens) through "
                "`hf auth login` or HF_TOKEN"
            )
        return token
    # a write token (or one whoami gives no role for): it writes to its owner's namespace and to those of the
    # organisations where the owner may write; without an owner's name there is nothing to decide on (accepted: the
    # upload will tell)
    writable = _writable_namespaces(info)
    if writable is not None and not any(_same_name(namespace, candidate) for candidate in writable):
        raise HubAccessError(
            f"--push_to_hub {repo_id}: the {name} of {user} cannot write to the namespace {namespace} (it can write to "
            f"{', '.join(writable)}); name a repository in one of those, or use a token of an account that may write "
            f"to {namespace} through `hf auth login` or HF_TOKEN"
        )
    return token


#: the roles in an organisation that may create or write repositories there ("contributor": its own ones)
ORG_WRITE_ROLES = ("admin", "write", "contributor")


def _same_name(first, second) -> bool:
    """Hub user, organisation and repository names are unique regardless of case."""
    return isinstance(first, str) and isinstance(second, str) and first.casefold() == second.casefold()


def _writable_namespaces(info: dict) -> list[str] | None:
    """The namespaces a (non-fine-grained) token of ``whoami`` answer ``info`` may push to: its owner's name and the
    organisations where the owner's role writes (:data:`ORG_WRITE_ROLES`; an organisation listed without a role
    counts as writable, so a sparse answer blocks nobody). None when ``info`` names no owner (nothing to decide on)."""
    user = info.get("name")
    if not isinstance(user, str) or not user:
        return None
    namespaces = [user]
    for org in info.get("orgs") or []:
        if not isinstance(org, dict) or not isinstance(org.get("name"), str):
            continue
        role = org.get("roleInOrg")
        if role is None or role in ORG_WRITE_ROLES:
            namespaces.append(org["name"])
    return namespaces
