rule runs_table:
    input:
        run_files(RUNS),
    output:
        report("results/tables/runs.csv", caption="../report/runs.rst", category="Runs"),
    log:
        "results/logs/runs_table.log",
    conda:
        "../../environment.yml"
    params:
        runs=" ".join(run_dirs(RUNS)),
    shell:
        "lssr runs-table --runs {params.runs} --out {output} > {log} 2>&1"
