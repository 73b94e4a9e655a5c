"""The non-Python consumers of the .onnx, each self-checked against the golden vectors exported beside it."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from golden_check import golden_problems

EXAMPLES = Path(__file__).parents[2] / "examples"


def _consumer_env(tiny_export) -> dict:
    result, out = tiny_export
    return {**os.environ, "MODEL_PATH": str(result.model_path), "GOLDEN_DIR": str(out / "onnx" / "golden")}


def _installed(example: str, package: str) -> Path:
    folder = EXAMPLES / example
    if shutil.which("node") is None or not (folder / "node_modules" / package).is_dir():
        pytest.fail(f"examples/{example} is not installed: run ./scripts/setup.sh (needs Node >= 20 and npm)")
    return folder


@pytest.fixture(scope="module")
def node_ready():
    return _installed("node", "onnxruntime-node")


def test_node_service_matches_the_golden_vectors_and_handles_bad_requests(tiny_export, node_ready):
    result = subprocess.run(
        ["node", "--test", "test/service.test.js"],
        cwd=node_ready,
        env=_consumer_env(tiny_export),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# pass 6" in result.stdout and "# fail 0" in result.stdout


@pytest.mark.slow
def test_node_service_short_load_test_has_no_failures(tiny_export, node_ready):
    env = {**_consumer_env(tiny_export), "REQUESTS": "400", "CONNECTIONS": "4"}
    result = subprocess.run(
        ["node", "loadtest.js"], cwd=node_ready, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["requests"] == 400 and summary["non2xx"] == 0 and summary["errors"] == 0
    for name, value in (("CONNECTIONS", "abc"), ("REQUESTS", "-5")):  # once: waited forever / autocannon's stack
        bad = subprocess.run(
            ["node", "loadtest.js"],
            cwd=node_ready,
            env={**env, name: value},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 2 and bad.stderr.startswith(f"error: {name} must be a whole number from 1 to ")
    missing = subprocess.run(  # once a stack trace from readFileSync
        ["node", "loadtest.js"],
        cwd=node_ready,
        env={**env, "GOLDEN_DIR": "/nonexistent"},
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and missing.stderr == (
        "error: /nonexistent/golden.json: no such file (GOLDEN_DIR, or golden/ beside the model)\n"
    )


@pytest.mark.slow
def test_web_page_classifies_the_golden_images_and_every_image_kind_in_chromium(
    tiny_export, image_kinds, mislabelled_model, tmp_path
):
    folder = _installed("web", "onnxruntime-web")
    if not Path("/usr/bin/chromium").is_file():
        pytest.fail("Debian's chromium is missing: run ./scripts/setup.sh")
    env = {**_consumer_env(tiny_export), "SCREENSHOT": str(tmp_path / "page.png"), "IMAGE_KINDS": str(image_kinds)}
    env["MISLABELLED_MODEL"] = str(mislabelled_model)
    result = subprocess.run(
        ["node", "--test", "test/page.test.js"], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# pass 5" in result.stdout and "# fail 0" in result.stdout
    assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def cpp_program():
    program = EXAMPLES / "cpp" / "build" / "classify"
    if not program.is_file():
        pytest.fail("examples/cpp is not built: run ./scripts/setup.sh (see .venv/cpp-build.log)")
    return program


def test_cpp_program_matches_the_golden_vectors_and_probabilities(tiny_export, cpp_program):
    result, out = tiny_export
    golden_dir = out / "onnx" / "golden"
    golden = json.loads((golden_dir / "golden.json").read_text())
    files = [str(golden_dir / entry["file"]) for entry in golden["images"]]
    run = subprocess.run(
        [str(cpp_program), str(result.model_path), *files, "--json"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    answers = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(answers) == len(golden["images"])
    for entry, answer in zip(golden["images"], answers, strict=True):
        assert golden_problems(answer, entry, golden) == [], entry["file"]


def test_cpp_program_refuses_metadata_it_would_misread(cpp_program, bad_metadata_models, tiny_export):
    good = next((tiny_export[1] / "onnx" / "golden").glob("*.png"))
    for model, words in bad_metadata_models.items():  # a negative T once ranked the classes backwards, exit 0
        run = subprocess.run([str(cpp_program), str(model), str(good)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 1 and run.stdout == "" and run.stderr.startswith(f"error: {model}: ")
        assert words in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr


def test_cpp_program_reports_bad_inputs(tiny_export, cpp_program, tmp_path, nan_model, mislabelled_model):
    result, out = tiny_export
    good = next((out / "onnx" / "golden").glob("*.png"))
    (tmp_path / "text.png").write_text("not a png")
    missing, folder = tmp_path / "missing.png", out / "onnx" / "golden"
    run = subprocess.run(
        [str(cpp_program), str(result.model_path), str(good), str(tmp_path / "text.png"), str(missing), str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 3 and len(run.stdout.splitlines()) == 1
    assert run.stderr.splitlines() == [  # a folder and a missing file were once "not a PNG" / "cannot open the file"
        f"error: {tmp_path / 'text.png'}: not a PNG file (this example decodes PNG only)",
        f"error: {missing}: no such file",
        f"error: {folder}: is a folder, not a PNG file (this program takes image files one by one)",
    ]
    if Path("/dev/full").exists():  # answers lost on a full disk were once exit 0
        with open("/dev/full", "w") as full:
            run = subprocess.run(
                [str(cpp_program), str(result.model_path), str(good)], stdout=full, stderr=subprocess.PIPE, timeout=60
            )
        assert run.returncode == 7 and run.stderr.decode().startswith("error: standard output: the results could not")
    import onnx

    proto = onnx.load(str(result.model_path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    run = subprocess.run(
        [str(cpp_program), str(tmp_path / "bare.onnx"), str(good)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1 and "no 'vggdeploy.format' metadata" in run.stderr
    run = subprocess.run(
        [str(cpp_program), str(mislabelled_model), str(good)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1 and run.stdout == ""  # it once printed the scores of 9 classes under shifted labels
    assert run.stderr == f"error: {mislabelled_model}: the metadata names 9 labels, but the graph outputs 10 classes\n"
    run = subprocess.run(
        [str(cpp_program), str(result.model_path), str(good), "--topk", "2"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and run.stderr.startswith("error: unknown option --topk\n"), run.stderr
    for flag, value in (("--top-k", "abc"), ("--top-k", "0"), ("--max-pixels", "-5"), ("--max-pixels", "1e9")):
        run = subprocess.run(
            [str(cpp_program), str(result.model_path), str(good), flag, value],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2 and run.stderr.startswith(f"error: {flag} needs a positive whole number"), run.stderr
    run = subprocess.run(
        [str(cpp_program), str(result.model_path), str(good), "--max-pixels", "100"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 3 and "pixels is over the limit of 100 (possible decompression bomb" in run.stderr
    run = subprocess.run([str(cpp_program), str(nan_model), str(good)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 4 and run.stdout == ""
    assert run.stderr == f"error: {good}: the model's output is not finite (NaN or inf): no probabilities\n"
    latin1 = tmp_path / os.fsdecode(b"caf\xe9.png")  # its --json once ended the run blaming the model (exit 1)
    shutil.copy(good, latin1)
    for output in ([], ["--json"]):
        run = subprocess.run([str(cpp_program), str(result.model_path), str(latin1), *output], capture_output=True)
        assert run.returncode == 0 and run.stderr == b"", run.stderr
        answer = run.stdout.decode("utf-8")  # valid UTF-8, the bytes as \xNN as vggdeploy run writes them
        shown = f"{tmp_path}/caf\\xe9.png"
        assert json.loads(answer)["file"] == shown if output else answer.startswith(f"{shown}  ")


def test_cpp_program_agrees_on_every_png_kind_and_refuses_jpeg_in_words(image_kinds, tiny_export, cpp_program):
    """16-bit gray at full precision, 16-bit colour by its high byte, alpha over black, palettes with transparency,
    1x1 and 4000x3000: the Python reference's logits within the golden tolerance. JPEG is refused by name."""
    from image_kinds import cpp_answers_on_every_kind

    answers = cpp_answers_on_every_kind(cpp_program, tiny_export[0].model_path, image_kinds)
    assert answers["blank_white"]["unfamiliar"] is True


def test_node_service_agrees_on_every_image_kind(image_kinds, tiny_export, node_ready):
    """Every kind within the golden tolerance (JPEG through sharp's mozjpeg, the decoder Pillow's libjpeg-turbo shares;
    the EXIF orientation applied), except CMYK JPEG, refused in words (libvips converts CMYK through ICC profiles)."""
    env = {**_consumer_env(tiny_export), "IMAGE_KINDS": str(image_kinds)}
    result = subprocess.run(
        ["node", "--test", "test/kinds.test.js"], cwd=node_ready, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# pass 1" in result.stdout and "# fail 0" in result.stdout


def _post(url: str, body: bytes) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_node_service_started_as_the_readme_says_answers_and_refuses_bad_settings(tiny_export, node_ready, nan_model):
    """`node src/server.js MODEL` with no WORKERS once started zero workers and answered 500 to every request; the
    tests had always passed an explicit worker count."""
    result, out = tiny_export
    golden = json.loads((out / "onnx" / "golden" / "golden.json").read_text())
    entry = golden["images"][0]
    image = (out / "onnx" / "golden" / entry["file"]).read_bytes()
    env = {k: v for k, v in os.environ.items() if k not in ("WORKERS", "MODEL_PATH")} | {"PORT": "0"}
    for model, expected in ((result.model_path, 200), (nan_model, 500)):
        service = subprocess.Popen(
            ["node", "src/server.js", str(model)], cwd=node_ready, env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            url = service.stdout.readline().split()[3]  # "vggdeploy service on http://127.0.0.1:PORT (...)"
            status, answer = _post(f"{url}/predict", image)
        finally:
            service.terminate()
            service.wait(timeout=30)
        assert status == expected, answer
        if expected == 200:
            assert answer["top"][0]["label"] == entry["label_name"]
            assert max(abs(a - b) for a, b in zip(answer["logits"], entry["logits"], strict=True)) <= 1e-3
        else:
            assert answer == {"error": "the model's output is not finite (NaN or inf): no probabilities"}
    for name, value in (("WORKERS", "0"), ("WORKERS", "two"), ("PORT", "99999")):
        run = subprocess.run(
            ["node", "src/server.js", str(result.model_path)],
            cwd=node_ready,
            env={**env, name: value},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2 and run.stderr.startswith(f"error: {name} must be a whole number"), run.stderr


def test_the_page_server_survives_malformed_requests(tiny_export):
    """A path with broken percent-encoding threw inside the page server's request handler and ended the server;
    '//[' made its URL parser throw."""
    import http.client
    from urllib.parse import urlsplit

    folder = _installed("web", "onnxruntime-web")
    env = {**os.environ, "PORT": "0"}
    command = ["node", "serve.js", str(tiny_export[0].model_path)]
    server = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, text=True)
    try:
        address = urlsplit(server.stdout.readline().split()[1])  # "open http://127.0.0.1:PORT/ (model: ...)"
        answers = []
        for path in ("/%E0%A4%A", "//[", "/model-info.json", "/"):
            connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
            connection.request("GET", path)
            response = connection.getresponse()
            answers.append((response.status, response.read()[:40]))
            connection.close()
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert answers[:2] == [(400, b"malformed percent-encoding in the path"), (404, b"not found")]
    assert [status for status, _ in answers[2:]] == [200, 200]


@pytest.mark.slow
def test_npm_test_alone_uses_the_newest_export_under_artifacts(tiny_export, node_ready):
    """`npm test` with no variables finds the newest model.onnx under the repository's artifacts/ (and its golden/)."""
    _, out = tiny_export
    run_folder = Path(__file__).parents[2] / "artifacts" / "npm-test-alone"
    try:
        shutil.copytree(out / "onnx", run_folder / "onnx", ignore=shutil.ignore_patterns("*.fp16.onnx", "*.int8.onnx"))
        env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "GOLDEN_DIR", "IMAGE_KINDS")}
        npm = subprocess.run(["npm", "test"], cwd=node_ready, env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(run_folder, ignore_errors=True)
    assert npm.returncode == 0, npm.stdout[-3000:] + npm.stderr[-2000:]
    assert "# fail 0" in npm.stdout and "# skipped 1" in npm.stdout  # the image-kinds test needs IMAGE_KINDS


@pytest.mark.parametrize(
    ("example", "script"), [("node", "src/server.js"), ("web", "serve.js")], ids=["node service", "web page server"]
)
@pytest.mark.slow
def test_example_servers_refuse_a_bad_model_in_one_line_before_serving(
    example, script, tmp_path, mislabelled_model, bad_metadata_models
):
    folder = _installed(example, "onnxruntime-node" if example == "node" else "onnxruntime-web")
    models = [(tmp_path / "nosuch.onnx", "no such model file"), (tmp_path, "")]
    if example == "node":  # the page's own refusal of such models is tested in Chromium (page.test.js)
        models.append((mislabelled_model, "the metadata names 9 labels, but the graph outputs 10 classes"))
        models += list(bad_metadata_models.items())  # one shared check with the page (js-common)
    for model, message in models:
        env = {**os.environ, "PORT": "0"}
        run = subprocess.run(
            ["node", script, str(model)], cwd=folder, env=env, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 1, (run.stdout, run.stderr)
        assert run.stderr.strip().splitlines() == [run.stderr.strip()] and run.stderr.startswith(f"error: {model}: ")
        assert message in run.stderr and "open http" not in run.stdout and "    at " not in run.stderr  # no stack
    latin1 = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))  # "no such model file" for a file that exists
    latin1.mkdir()
    shutil.copy(mislabelled_model, latin1 / "model.onnx")
    run = subprocess.run(["node", script, latin1 / "model.onnx"], cwd=folder, capture_output=True, timeout=60)
    assert run.returncode == 1 and run.stderr.decode() == (
        f"error: {tmp_path}/caf\ufffd/model.onnx: no such model file as Node reads the name: its bytes are not UTF-8 "
        "(shown as \ufffd) and Node opens files by UTF-8 names only; rename the file or its folder, or link to it "
        "(ln -s)\n"
    )
    model = next(Path(__file__).parents[2].glob("examples/js-common/*.js"))  # any file passes serve.js's check
    run = subprocess.run(
        ["node", script, str(model)],
        cwd=folder,
        env={**os.environ, "PORT": "80a"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and run.stderr == "error: PORT must be a whole number from 0 to 65535, got '80a'\n"
