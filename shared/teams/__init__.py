"""Team access files on the command line: `python -m shared.teams validate|plan|sync <folder>...`.

The repository that holds the teams' `access.yaml` files runs it in CI (docs/ci/):

- `validate`: the pull-request check. It needs no cluster and no Azure: it reads the files and
  the catalog (CONFIG_FILE, default config.yaml) and prints one line per problem,
  `path: field: reason`, exiting 1 if there is any (0 otherwise).
- `plan`: what each valid file grants and would create, compared with nothing stored; with
  `--url`, the plan the app would execute, as `sync --dry-run` prints it (without credentials,
  each file is planned by the app's anonymous `POST /api/teams/validate`).
- `sync`: after a merge, makes the app's teams equal to the folder: every file checked first,
  only changed ones sent (by the content hash the app stores), teams without a file deleted with
  `--prune` (at most `--max-deletes`), a table and a summary, exit 0/1/2 (shared/teams/sync.py).

Modules: `files` (reading the folder), `client` (the app's team endpoints over HTTP: credentials,
timeouts, retries), `sync` (deciding, sending, printing), `__main__` (the command line). See
docs/teams.md.
"""
