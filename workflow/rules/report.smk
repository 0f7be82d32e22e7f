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


# The two tables that open report.html (workflow/report/workflow.rst includes them): one line per claim (summary),
# then one line per claim row (verdicts).
rule summary:
    input:
        "results/claims.csv",
    output:
        "results/summary.csv",
    log:
        "results/logs/summary.log",
    shell:
        "lssr summary --claims {input} --out {output} > {log} 2>&1"


rule verdicts:
    input:
        "results/claims.csv",
    output:
        "results/verdicts.csv",
    log:
        "results/logs/verdicts.log",
    shell:
        "lssr verdicts --claims {input} --out {output} > {log} 2>&1"
