"""Runs shellcheck over the shell of GitLab CI recipes: each job's before_script, script and
after_script, as one POSIX sh script (the shell GitLab falls back to). actionlint does the same for
GitHub Actions' `run:` steps.

Usage: python shell_blocks.py SHELLCHECK FILE...
Prints shellcheck's findings with the recipe's file, job and line, and exits 1 when there is one.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

from ruamel.yaml import YAML

# Not jobs: GitLab's top-level keywords.
GITLAB_KEYWORDS = {"default", "include", "stages", "variables", "workflow", "image", "services",
                   "cache", "before_script", "after_script", "spec"}


def gitlab_blocks(doc):
    for job_name, job in doc.items():
        if job_name in GITLAB_KEYWORDS or job_name.startswith(".") or not isinstance(job, dict):
            continue
        for key in ("before_script", "script", "after_script"):
            lines = job.get(key)
            if lines is None:
                continue
            if isinstance(lines, str):
                lines = [lines]
            line = job.lc.key(key)[0] + 1
            # GitLab runs a job's lines one after another in one shell, as one script.
            yield f"job {job_name}, {key}", line, "sh", "\n".join(str(x) for x in lines)


def main():
    shellcheck, files = sys.argv[1], sys.argv[2:]
    failed = 0
    checked = 0
    for name in files:
        doc = YAML().load(Path(name).read_text())
        for where, line, shell, script in gitlab_blocks(doc):
            checked += 1
            with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
                f.write(script + "\n")
                f.flush()
                out = subprocess.run(
                    [shellcheck, f"--shell={shell}", "--format=gcc", f.name],
                    capture_output=True, text=True, check=False,
                )
            if out.returncode != 0:
                failed += 1
                print(f"{name}:{line}: {where}: shellcheck ({shell}) found:")
                print(out.stdout.replace(f.name, "  line") + out.stderr, end="")
    print(f"shellcheck checked {checked} blocks in {len(files)} file(s), {failed} with findings")
    if checked == 0:
        print("no shell blocks found: is this the right kind of file?")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
