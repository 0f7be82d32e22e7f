rule runs_table:
    input:
        run_files(RUNS),
    output:
        report("results/tables/runs.csv", caption="../report/runs.rst", category="Runs"),
    log:
        "results/logs/runs_table.log",
    params:
        runs=" ".join(run_dirs(RUNS)),
    shell:
        "lssr runs-table --runs {params.runs} --out {output} > {log} 2>&1"


# The verdict table that opens report.html (workflow/report/workflow.rst includes it).
rule verdicts:
    input:
        "results/claims.csv",
    output:
        "results/verdicts.csv",
    log:
        "results/logs/verdicts.log",
    shell:
        "lssr verdicts --claims {input} --out {output} > {log} 2>&1"
