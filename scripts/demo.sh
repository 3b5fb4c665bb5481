#!/usr/bin/env bash
# Sets hal up and runs one task end to end: a custom agent fixes a failing test inside a
# bubblewrap sandbox, and the fix comes back as branch hal/<id> in the demo repository.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
hal=$PWD/.venv/bin/hal
export HAL_HOME=${HAL_HOME:-$PWD/.hal/home}

demo=$(mktemp -d /tmp/hal-demo.XXXXXX)/repo
mkdir -p "$demo" && cd "$demo"
git init -q -b main
cat > calc.py <<'PY'
def add(a, b):
    return a - b
PY
cat > test_calc.py <<'PY'
import calc

assert calc.add(2, 3) == 5, f"add(2, 3) returned {calc.add(2, 3)}"
print("test_calc: ok")
PY
# The "agent": reads its prompt, edits the code, runs the test. Any command can be an agent.
cat > demo_agent.sh <<'SH'
#!/bin/sh
export PYTHONDONTWRITEBYTECODE=1  # an edit within the same second must not look stale
echo "demo agent: prompt is: $(cat "$1")"
python3 test_calc.py || echo "demo agent: the test fails, fixing calc.py"
sed -i 's/a - b/a + b/' calc.py
python3 test_calc.py
SH
echo "__pycache__/" > .gitignore
git add -A && git -c user.name=demo -c user.email=demo@localhost commit -qm "calc with a bug"

echo "== hal doctor"
"$hal" doctor || true
echo "== hal run (provider bwrap, custom agent)"
"$hal" run --provider bwrap --agent 'sh demo_agent.sh {{prompt_file}}' "fix the failing test"
id=$("$hal" task list --limit 1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
echo "== branch hal/$id in $demo"
git log --oneline -2 "hal/$id"
echo "== hal task diff $id"
"$hal" task diff "$id"
echo "== hal task events $id"
"$hal" task events "$id"
