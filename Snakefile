# lssr: every experiment of the paper as one DAG.
#   snakemake --cores all                              demo config (default)
#   snakemake --cores all --configfile config/paper.yaml
#   snakemake figures/fig4.pdf --cores all             one figure and only what it needs
#   snakemake --profile profiles/slurm --configfile config/paper.yaml
from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "config/demo.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        figure_targets(),
        "results/claims.csv",
        "results/tables/runs.csv",
