# Each training job writes its run's planned config to results/runs/<run>/config.yaml before it trains (lssr
# train --json): the config is a parameter of the job, so a changed config reruns that job (Snakemake's params
# trigger) and no other.
rule train:
    input:
        data=lambda w: f"{PLAN.subset_dir(w.run)}/manifest.json",
    output:
        config="results/runs/{run}/config.yaml",
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
        config=lambda w: PLAN.config_arg(w.run),
        data=lambda w: PLAN.subset_dir(w.run),
    shell:
        "lssr train {params.config} --data {params.data} > {log} 2>&1"


# With `batch_runs: true`, the Figure-5 runs of one (data set, b) that differ only in η are trained
# together by one `lssr train-batch` job (one stacked model, see lssr.training); a cell listed in
# experiments.fig5.data_parallel runs it under torchrun over that many GPUs (lssr.training.distributed).
if PLAN.settings.batch_runs:
    for _group, _members in PLAN.groups.items():

        rule:
            name:
                f"train_group_{re.sub(r'[^0-9A-Za-z_]', '_', _group)}"
            input:
                data=f"{PLAN.subset_dir(_members[0])}/manifest.json",
            output:
                configs=[f"results/runs/{r}/config.yaml" for r in _members],
                metrics=[f"results/runs/{r}/metrics.csv" for r in _members],
                run=[f"results/runs/{r}/run.json" for r in _members],
            log:
                f"results/logs/train_group/{_group}.log",
            benchmark:
                f"results/benchmarks/train_group/{_group}.tsv"
            priority: PLAN.group_priority(_group)  # the longest groups start first
            threads: RESOURCES.threads
            resources:
                **PLAN.group_resources(_group),  # gpu = R for a data-parallel cell
            params:
                launch=PLAN.group_command(_group),  # torchrun over R GPUs for a data-parallel cell
                args=" ".join(PLAN.config_arg(r) for r in _members),
                data=lambda w, input: os.path.dirname(input.data),
            shell:
                "{params.launch} {params.args} --data {params.data} > {log} 2>&1"
