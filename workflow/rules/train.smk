rule run_config:
    output:
        "results/runs/{run}/config.yaml",
    log:
        "results/logs/config/{run}.log",
    conda:
        "../../environment.yml"
    params:
        cfg=lambda w: json.dumps(RUNS[w.run], sort_keys=True),
    shell:
        "lssr write-config --json '{params.cfg}' --out {output} > {log} 2>&1"


rule train:
    input:
        config="results/runs/{run}/config.yaml",
        data=lambda w: f"results/data/{PLAN.run_subset[w.run]}/manifest.json",
    output:
        metrics="results/runs/{run}/metrics.csv",
        run="results/runs/{run}/run.json",
    log:
        "results/logs/train/{run}.log",
    conda:
        "../../environment.yml"
    threads: RES.get("threads", 1)
    resources:
        mem_mb=RES.get("mem_mb", 4000),
        runtime=RES.get("runtime", 60),
        gpu=GPU,
    params:
        data=lambda w: f"results/data/{PLAN.run_subset[w.run]}",
    shell:
        "lssr train {input.config} --data {params.data} --out results/runs/{wildcards.run} > {log} 2>&1"
