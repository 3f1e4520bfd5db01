"""Team access files on the command line: `python -m shared.teams validate <dir-or-file>...`.

The pull-request check of the repository that holds the teams' `access.yaml` files. It needs no
cluster and no Azure: it reads the files and the catalog (CONFIG_FILE, default config.yaml) and
prints one line per problem, `path: field: reason`, exiting 1 if there is any (0 otherwise).
`plan` prints what each valid file grants and would create (compared with nothing stored; the
`POST /api/teams/validate` endpoint compares with what is stored). See docs/teams.md.
"""
