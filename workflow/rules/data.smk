rule subset:
    output:
        manifest="results/data/{subset}/manifest.json",
        data="results/data/{subset}/data.pt",
    log:
        "results/logs/subset/{subset}.log",
    params:
        args=lambda w: PLAN.subset_args(w.subset),
    shell:
        "lssr subset {params.args} --out results/data/{wildcards.subset} > {log} 2>&1"
