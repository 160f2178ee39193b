"""What every converter's command line does around the conversion (:func:`hf_semseg.conversion.common.converter_main`):
the output folder is refused before any work when it cannot be filled, written completely or not at all (checked in
a fresh process first), and the Hub is checked before any work and receives the complete folder. Run with the
SeMask-FPN script in-process; the Hub client is mocked (nothing leaves the machine)."""

import contextlib
import hashlib
import io
import os
import shutil
from pathlib import Path

import huggingface_hub
import pytest
from script_helpers import load_example

from hf_semseg.conversion import common
from hf_semseg.hub import HubAccessError, check_hub_access

from conftest import REPO_ROOT, fixture_dir


SCRIPT = REPO_ROOT / "conversion" / "convert_semask_fpn_to_hf.py"
REPO_ID = "someone/semask-fpn-tiny"
WRITE_TOKEN = {"name": "someone", "auth": {"accessToken": {"displayName": "laptop", "role": "write"}}}


def checkpoint() -> Path:
    return fixture_dir("semask_fpn_tiny") / "original_checkpoint.pth"


def run(*args) -> tuple[int, str, str]:
    """The converter's ``main`` in-process: exit status, stdout, stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = load_example(SCRIPT).main([str(arg) for arg in args])
    return status, stdout.getvalue(), stderr.getvalue()


def contents(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def mock_hub(monkeypatch, offline=False, token="hf_test", whoami=WRITE_TOKEN, upload_error=None) -> list:
    """Replaces what :func:`check_hub_access` and :func:`common.push_to_hub` read of ``huggingface_hub``;
    returns the list the repository creation and the upload are recorded in (the upload with the files it was
    given, read at the time of the call)."""
    calls = []

    def fake_whoami(self, token=None, **kwargs):
        calls.append(("whoami", token))
        if isinstance(whoami, Exception):
            raise whoami
        return whoami

    def fake_create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs.get("exist_ok")))
        return f"https://huggingface.co/{repo_id}"

    def fake_upload_folder(self, *, folder_path, repo_id, **kwargs):
        calls.append(("upload_folder", repo_id, Path(folder_path), contents(Path(folder_path))))
        if upload_error is not None:
            raise upload_error

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", fake_whoami)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload_folder)
    return calls


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """One conversion with the reload check and a (mocked) push: ``(status, stdout, stderr, folder, hub calls)``."""
    path = checkpoint()
    out = tmp_path_factory.mktemp("pushed") / "out"
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = mock_hub(monkeypatch)
        status, stdout, stderr = run("--checkpoint_path", path, "--output_dir", out, "--push_to_hub", REPO_ID)
    return status, stdout, stderr, out, calls


def test_push_uploads_the_complete_final_folder(pushed):
    status, stdout, stderr, out, calls = pushed
    assert status == 0, stderr
    assert [call[0] for call in calls] == ["whoami", "create_repo", "upload_folder"]
    assert calls[1] == ("create_repo", REPO_ID, True)
    _, repo_id, folder, uploaded = calls[2]
    assert repo_id == REPO_ID and folder == out  # the final folder, not the temporary one
    assert set(uploaded) == {path.name for path in out.iterdir()}  # everything written, nothing else
    modules = {name for name in uploaded if name.endswith(".py")}
    assert {"configuration_semask_swin.py", "modeling_semask_swin.py"} <= modules
    assert set(uploaded) == {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} | modules
    assert os.listdir(out.parent) == ["out"]  # no temporary folder left next to it
    assert f"pushed {out} to https://huggingface.co/{REPO_ID}" in stdout


def test_card_and_summary_state_the_reload_check(pushed):
    status, stdout, _, out, _ = pushed
    card = (out / "README.md").read_text()
    assert (
        "Checked at conversion: reloaded in a fresh process without hf-semseg (`trust_remote_code=True`), the " in card
    )
    assert "logits on a seeded 1x3x128x192 input" in card and "max(1, max |logit|)" in card
    assert "$" not in card.split("```")[0]
    assert "; reload check in a fresh process: max abs diff " in stdout


def test_a_non_empty_folder_is_refused_before_reading_and_left_as_it_was(pushed, tmp_path):
    out = pushed[3]
    before = contents(out)
    # an absent checkpoint: reading it first would be a "no such file" error
    status, stdout, stderr = run("--checkpoint_path", tmp_path / "absent.pth", "--output_dir", out)
    names = sorted(before)
    listed = ", ".join(names[:5]) + ", ..."
    assert status == 1 and stdout == ""
    assert stderr == (
        f"error: --output_dir {out} is not empty ({len(names)} entries: {listed}); pass --overwrite to replace it, or "
        "choose another folder\n"
    )
    assert contents(out) == before


def test_overwrite_replaces_the_folder_and_the_skipped_check_is_stated(pushed, tmp_path):
    target = tmp_path / "target"
    shutil.copytree(pushed[3], target)
    (target / "stale.txt").write_text("from an earlier run")
    status, stdout, stderr = run(
        "--checkpoint_path", checkpoint(), "--output_dir", target, "--overwrite", "--skip_reload_check"
    )
    assert status == 0, stderr
    assert set(contents(target)) == set(contents(pushed[3]))  # stale.txt is gone
    assert os.listdir(tmp_path) == ["target"]  # neither the new temporary folder nor the old one is left
    assert stdout.rstrip().endswith("; reload check SKIPPED (--skip_reload_check)")
    card = (target / "README.md").read_text()
    assert "Not checked at conversion: the reload check was skipped (`--skip_reload_check`)." in card
    assert "Checked at conversion" not in card


def test_overwrite_never_deletes_the_checkpoint(tmp_path):
    (tmp_path / "out").mkdir()
    inside = tmp_path / "out" / "model.pth"
    shutil.copy(checkpoint(), inside)
    status, _, stderr = run("--checkpoint_path", inside, "--output_dir", tmp_path / "out", "--overwrite")
    assert status == 1
    assert stderr == (
        f"error: --output_dir {tmp_path / 'out'} holds the checkpoint {inside}: --overwrite would delete it; choose "
        "another folder\n"
    )
    assert inside.is_file()


def unwritable_folder(tmp_path) -> tuple[Path, str]:
    """A folder nobody may create folders in, and the reason the system gives."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked, "Permission denied"
    try:  # root may write anywhere, but not in sysfs
        (Path("/sys") / "hf_semseg_probe").mkdir()
    except OSError as error:
        return Path("/sys"), error.strerror
    pytest.skip("no unwritable folder on this system")


def test_an_unwritable_location_is_refused_before_reading(tmp_path):
    absent = tmp_path / "absent.pth"  # read first, it would be a "no such file" error
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    locked, reason = unwritable_folder(tmp_path)
    try:
        cases = {
            a_file: f"error: --output_dir {a_file} is a file, not a folder\n",
            a_file / "out": f"error: --output_dir {a_file / 'out'} cannot be created: {a_file} is not a folder\n",
            locked / "a" / "out": (
                f"error: --output_dir {locked / 'a' / 'out'}: cannot write in {locked} ({reason}); choose a folder "
                "you can write to\n"
            ),
        }
        for out, message in cases.items():
            status, stdout, stderr = run("--checkpoint_path", absent, "--output_dir", out)
            assert (status, stdout, stderr) == (1, "", message)
        assert not (locked / "a").exists()
    finally:
        if locked.is_relative_to(tmp_path):
            locked.chmod(0o755)
    assert a_file.read_text() == "x"


def test_a_failure_midway_leaves_no_folder_and_an_old_one_unchanged(tmp_path, monkeypatch):
    checked = []

    def failing_check(model, folder, check):
        checked.append({path.name for path in Path(folder).iterdir()})
        raise common.ConversionError("the saved model differs (simulated)")

    monkeypatch.setattr(common, "check_reload", failing_check)
    out = tmp_path / "new" / "nested" / "out"
    status, stdout, stderr = run("--checkpoint_path", checkpoint(), "--output_dir", out)
    assert (status, stdout) == (1, "")
    assert stderr == f"error: the saved model differs (simulated); {out} was not written\n"
    assert "model.safetensors" in checked[0]  # the check ran on the written temporary folder
    assert os.listdir(tmp_path) == []  # no folder, no temporary folder, no parent created for them

    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    status, _, stderr = run("--checkpoint_path", checkpoint(), "--output_dir", old, "--overwrite")
    assert status == 1
    assert stderr == f"error: the saved model differs (simulated); {old} was left unchanged\n"
    assert contents(old) == {"keep.txt": hashlib.sha256(b"mine").hexdigest()} and os.listdir(tmp_path) == ["old"]


READ_TOKEN = {"name": "someone", "auth": {"accessToken": {"displayName": "ci", "role": "read"}}}


def fine_grained(*scopes) -> dict:
    scoped = [
        {"entity": {"type": kind, "name": name}, "permissions": permissions} for kind, name, permissions in scopes
    ]
    return {
        "name": "someone",
        "auth": {"accessToken": {"displayName": "fg", "role": "fineGrained", "fineGrained": {"scoped": scoped}}},
    }


HUB_REFUSALS = {
    "offline": (
        {"offline": True},
        "error: --push_to_hub: the Hub is switched off here (HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE to push, or "
        "convert without --push_to_hub\n",
    ),
    "no token": (
        {"token": None},
        "error: --push_to_hub: no Hugging Face token found; run `hf auth login` (or `huggingface-cli login`) or set "
        "HF_TOKEN\n",
    ),
    "unreachable": (
        {"whoami": ConnectionError("Name or service not known\nmore detail")},
        "error: --push_to_hub: cannot reach the Hub to check the token (ConnectionError: Name or service not known); "
        "check the network connection (and HF_ENDPOINT) and that the token is valid, or convert without "
        "--push_to_hub\n",
    ),
    "read token": (
        {"whoami": READ_TOKEN},
        f"error: --push_to_hub {REPO_ID}: the token 'ci' of someone is read-only; use a token with write access "
        "(https://huggingface.co/settings/tokens) through `hf auth login` or HF_TOKEN\n",
    ),
    "fine-grained without write": (
        {"whoami": fine_grained(("user", "someone", ["repo.content.read"]), ("org", "other", ["repo.write"]))},
        f"error: --push_to_hub {REPO_ID}: the fine-grained token 'fg' has no write permission on someone or {REPO_ID}; "
        "use a token with write access (https://huggingface.co/settings/tokens) through `hf auth login` or HF_TOKEN\n",
    ),
}


@pytest.mark.parametrize("case", list(HUB_REFUSALS))
def test_the_hub_is_checked_before_any_work(case, tmp_path, monkeypatch):
    settings, message = HUB_REFUSALS[case]
    calls = mock_hub(monkeypatch, **settings)
    # an absent checkpoint: reading it first would be a "no such file" error
    status, stdout, stderr = run(
        "--checkpoint_path", tmp_path / "absent.pth", "--output_dir", tmp_path / "out", "--push_to_hub", REPO_ID
    )
    assert (status, stdout, stderr) == (1, "", message)
    assert os.listdir(tmp_path) == []
    assert all(call[0] == "whoami" for call in calls)  # nothing created, nothing uploaded


@pytest.mark.parametrize(
    "whoami",
    [
        WRITE_TOKEN,
        fine_grained(("user", "someone", ["repo.content.read", "repo.write"])),
        fine_grained(("model", REPO_ID, ["repo.write"])),
        {"name": "someone", "auth": {"type": "oauth"}},  # no role to read: the upload will tell
    ],
)
def test_tokens_that_can_write_are_accepted(whoami, monkeypatch):
    mock_hub(monkeypatch, whoami=whoami)
    assert check_hub_access(REPO_ID) == "hf_test"
    org_token = fine_grained(("org", "lab", ["repo.write"]))
    mock_hub(monkeypatch, whoami=org_token)
    assert check_hub_access("lab/model") == "hf_test"
    with pytest.raises(HubAccessError, match="no write permission on someone"):
        check_hub_access("model")  # no namespace: the token owner's


WRITER_IN_ORGS = {
    "name": "someone",
    "orgs": [
        {"type": "org", "name": "lab", "roleInOrg": "write"},
        {"type": "org", "name": "team", "roleInOrg": "contributor"},
        {"type": "org", "name": "readers", "roleInOrg": "read"},
        {"type": "org", "name": "unsaid"},  # no role listed: counted as writable (blocks nobody)
    ],
    "auth": {"accessToken": {"displayName": "laptop", "role": "write"}},
}


@pytest.mark.parametrize(
    ("whoami", "repo_id", "writable"),
    [
        (WRITER_IN_ORGS, "stranger/model", "someone, lab, team, unsaid"),
        (WRITER_IN_ORGS, "readers/model", "someone, lab, team, unsaid"),
        # no role, or no auth at all: the namespace is still known to be someone else's
        ({"name": "someone", "auth": {"accessToken": {"displayName": "laptop"}}}, "stranger/model", "someone"),
        ({"name": "someone"}, "stranger/model", "someone"),
    ],
)
def test_a_token_is_refused_for_a_namespace_it_cannot_write(whoami, repo_id, writable, monkeypatch):
    """A write token writes to its owner's namespace and to the organisations where the owner writes, nowhere else."""
    mock_hub(monkeypatch, whoami=whoami)
    namespace = repo_id.split("/")[0]
    token = "token 'laptop'" if "auth" in whoami else "token"
    with pytest.raises(HubAccessError) as error:
        check_hub_access(repo_id)
    assert str(error.value) == (
        f"--push_to_hub {repo_id}: the {token} of someone cannot write to the namespace {namespace} (it can write to "
        f"{writable}); name a repository in one of those, or use a token of an account that may write to {namespace} "
        "through `hf auth login` or HF_TOKEN"
    )


@pytest.mark.parametrize("repo_id", ["someone/model", "Someone/model", "model", "lab/model", "team/m", "unsaid/m"])
def test_a_write_token_is_accepted_in_its_own_and_its_organisations_namespaces(repo_id, monkeypatch):
    mock_hub(monkeypatch, whoami=WRITER_IN_ORGS)
    assert check_hub_access(repo_id) == "hf_test"


@pytest.mark.parametrize(
    "owner", [{}, {"name": ""}, {"name": None}, {"name": 42}], ids=["absent", "empty", "null", "int"]
)
def test_whoami_without_an_owner_name_is_not_decided_on(owner, monkeypatch):
    """Nothing to compare the namespace with: accepted (the upload has the last word)."""
    mock_hub(monkeypatch, whoami={**owner, "auth": {"accessToken": {"role": "write"}}})
    assert check_hub_access("stranger/model") == "hf_test"


def test_malformed_organisation_entries_of_whoami_are_skipped(monkeypatch):
    """An organisation entry that is not a mapping or has no string name grants nothing (and breaks nothing)."""
    orgs = [
        "lab",
        None,
        {"name": 5, "roleInOrg": "admin"},
        {"roleInOrg": "write"},
        {"name": "team", "roleInOrg": "admin"},
    ]
    mock_hub(monkeypatch, whoami={"name": "someone", "orgs": orgs, "auth": {"accessToken": {"role": "write"}}})
    assert check_hub_access("team/model") == "hf_test"
    with pytest.raises(HubAccessError, match=r"cannot write to the namespace lab \(it can write to someone, team\);"):
        check_hub_access("lab/model")


def test_a_model_scoped_fine_grained_token_covers_the_id_without_namespace(monkeypatch):
    """``model`` is the token owner's ``someone/model``, which the token is scoped to."""
    mock_hub(monkeypatch, whoami=fine_grained(("model", "someone/model", ["repo.write"])))
    assert check_hub_access("model") == "hf_test"
    assert check_hub_access("someone/model") == "hf_test"
    with pytest.raises(HubAccessError, match="no write permission on someone or someone/other"):
        check_hub_access("other")


def test_a_failed_upload_is_one_line_and_keeps_the_folder(tmp_path, monkeypatch):
    mock_hub(monkeypatch, upload_error=OSError("quota exceeded\ndetails"))
    out = tmp_path / "out"
    status, stdout, stderr = run(
        "--checkpoint_path", checkpoint(), "--output_dir", out, "--push_to_hub", REPO_ID, "--skip_reload_check"
    )
    assert status == 1 and stdout.startswith("converted ")
    assert stderr == (
        f"error: pushing to {REPO_ID} failed (OSError: quota exceeded); {out} is written, upload it with "
        f"`hf upload {REPO_ID} {out}`\n"
    )
    assert (out / "model.safetensors").is_file()


def test_a_usage_error_is_one_line_and_status_1(tmp_path):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_info:
        load_example(SCRIPT).main(["--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    assert stderr.getvalue() == "error: the following arguments are required: --checkpoint_path (see --help)\n"


@pytest.mark.parametrize("repo_id", ["someone/my model", "a/b/c", "someone/model.git", "", None])
def test_a_repository_id_the_hub_refuses_is_named_before_the_hub_is_asked(repo_id, monkeypatch):
    """A training run's default repository id is its output folder's name: with a space in it, the run trained and
    then failed at ``create_repo``. Mocked: nothing leaves the machine."""
    from hf_semseg.hub import HubAccessError, check_hub_access

    calls = []
    writer = {"name": "someone", "auth": {"accessToken": {"role": "write"}}}
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, token=None: calls.append(token) or writer)
    if isinstance(repo_id, str):  # the client's own reason, its first line
        with pytest.raises(huggingface_hub.utils.HFValidationError) as reason:
            huggingface_hub.utils.validate_repo_id(repo_id)
        detail = str(reason.value).strip().splitlines()[0]
    else:
        detail = "a repository id is a string, got NoneType"
    with pytest.raises(HubAccessError) as refusal:
        check_hub_access(repo_id)
    assert str(refusal.value) == f"--push_to_hub: {repo_id!r} is not a Hub repository id: {detail}"
    with pytest.raises(HubAccessError, match=r"; name one with --hub_model_id$"):
        check_hub_access(repo_id, task="train")
    assert calls == []  # refused before the token is even looked at
    assert check_hub_access("someone/my-model") == "hf_test" and calls == ["hf_test"]
