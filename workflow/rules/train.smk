rule run_config:
    output:
        "results/runs/{run}/config.yaml",
    log:
        "results/logs/config/{run}.log",
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
    benchmark:
        "results/benchmarks/train/{run}.tsv"
    wildcard_constraints:
        run=SINGLE_RUN,
    threads: RESOURCES.threads
    resources:
        **JOB_RESOURCES,
        runtime=lambda w: PLAN.runtime[w.run],
    params:
        data=lambda w: f"results/data/{PLAN.run_subset[w.run]}",
    shell:
        "lssr train {input.config} --data {params.data} --out results/runs/{wildcards.run} > {log} 2>&1"


# With `batch_runs: true`, the Figure-5 runs of one (data set, b) that differ only in η are trained
# together by one `lssr train-batch` job (one stacked model, see lssr.training); a cell listed in
# experiments.fig5.data_parallel runs it under torchrun over that many GPUs (lssr.training.distributed).
if PLAN.settings.batch_runs:
    for _group, _members in PLAN.groups.items():

        rule:
            name:
                f"train_group_{re.sub(r'[^0-9A-Za-z_]', '_', _group)}"
            input:
                configs=[f"results/runs/{r}/config.yaml" for r in _members],
                data=f"results/data/{PLAN.run_subset[_members[0]]}/manifest.json",
            output:
                metrics=[f"results/runs/{r}/metrics.csv" for r in _members],
                run=[f"results/runs/{r}/run.json" for r in _members],
            log:
                f"results/logs/train_group/{_group}.log",
            benchmark:
                f"results/benchmarks/train_group/{_group}.tsv"
            threads: RESOURCES.threads
            resources:
                **PLAN.group_resources(_group),  # gpu = R for a data-parallel cell
            params:
                launch=PLAN.group_command(_group),  # torchrun over R GPUs for a data-parallel cell
                args=" ".join(
                    f"--config results/runs/{r}/config.yaml --out results/runs/{r}"
                    for r in _members
                ),
                data=lambda w, input: os.path.dirname(input.data),
            shell:
                "{params.launch} {params.args} --data {params.data} > {log} 2>&1"
