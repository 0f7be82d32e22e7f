# Tables (paper quantities computed from run outputs) -> figures (plots only) -> claims.


rule table:
    input:
        lambda w: run_files(PLAN.figure_runs(w.fig)),
    output:
        "results/tables/{fig}.csv",
    log:
        "results/logs/table/{fig}.log",
    params:
        runs=lambda w: " ".join(run_dirs(PLAN.figure_runs(w.fig))),
    shell:
        "lssr table {wildcards.fig} --runs {params.runs} --out {output} > {log} 2>&1"


rule figure:
    input:
        "results/tables/{fig}.csv",
    output:
        pdf="figures/{fig}.pdf",
        png=report(
            "figures/{fig}.png", caption="../report/figure.rst", category="Figures"
        ),
        data="figures/data/{fig}.csv",
    log:
        "results/logs/figure/{fig}.log",
    shell:
        "lssr figure {wildcards.fig} --table {input} --out {output.pdf} > {log} 2>&1"


rule claims:
    input:
        [f"results/tables/{f}.csv" for f in PLAN.figures if f in claim_tables()],
    output:
        report("results/claims.csv", caption="../report/claims.rst", category="Claims"),
    log:
        "results/logs/claims.log",
    params:
        tables=" ".join(
            f"--table {f}=results/tables/{f}.csv"
            for f in PLAN.figures
            if f in claim_tables()
        ),
    shell:
        "lssr claims {params.tables} --out {output} > {log} 2>&1"
