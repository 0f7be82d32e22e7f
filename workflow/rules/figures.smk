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
        lambda w: [f"results/tables/{t}.csv" for t in figure_tables(w.fig)],
    output:
        pdf="figures/{fig}.pdf",
        png=report(
            "figures/{fig}.png", caption="../report/figure.rst", category="Figures"
        ),
        data="figures/data/{fig}.csv",
    log:
        "results/logs/figure/{fig}.log",
    params:
        tables=lambda w, input: " ".join(f"--table {t}" for t in input),
    shell:
        "lssr figure {wildcards.fig} {params.tables} --out {output.pdf} > {log} 2>&1"


# Table fig5_rho (B_simple of the trained Figure-5 models that reached the goal, lssr.tables.fig5_rho): one job
# per data set, then the parts joined; claim C5 reads it beside fig5.
rule fig5_rho:
    input:
        runs=lambda w: run_files(PLAN.fig5_rho_runs(w.dataset)),
        data=lambda w: f"{PLAN.subset_dir(PLAN.fig5_rho_runs(w.dataset)[0])}/manifest.json",
    output:
        "results/tables/fig5_rho/{dataset}.csv",
    log:
        "results/logs/fig5_rho/{dataset}.log",
    wildcard_constraints:
        dataset=r"[^/]+",
    resources:
        # the training jobs' GPU (device: cuda); threads, memory and runtime: the profile's defaults
        **{k: v for k, v in JOB_RESOURCES.items() if k in ("gpu", "gpu_model")},
    params:
        args=lambda w: PLAN.fig5_rho_args(w.dataset),
    shell:
        "lssr fig5-rho {params.args} --out {output} > {log} 2>&1"


rule fig5_rho_join:
    input:
        [f"results/tables/fig5_rho/{ds}.csv" for ds in PLAN.fig5_rho],
    output:
        "results/tables/fig5_rho.csv",
    log:
        "results/logs/fig5_rho.log",
    shell:
        "lssr fig5-rho --join {input} --out {output} > {log} 2>&1"


rule claims:
    input:
        [f"results/tables/{f}.csv" for f in claim_tables_of(PLAN.figures)],
    output:
        report("results/claims.csv", caption="../report/claims.rst", category="Claims"),
    log:
        "results/logs/claims.log",
    params:
        tables=" ".join(
            f"--table {f}=results/tables/{f}.csv"
            for f in claim_tables_of(PLAN.figures)
        ),
    shell:
        "lssr claims {params.tables} --out {output} > {log} 2>&1"
