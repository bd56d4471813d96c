"""The presets: the published recipes (DDGAN's, WaveDiff's *_wavelet, LDDGAN's *_latent) and the demo's, as
the Config fields each changes from the CIFAR-10 defaults."""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # The original's CIFAR-10 command: 4 GPUs x 64 images, 1800 epochs of 50k images.
    "cifar10": dict(data="cifar10"),
    # Stacked MNIST (three digits as RGB channels), the CIFAR-10 recipe without flips.
    "stackmnist": dict(data="stackmnist", hflip=False, r1_gamma=0.05, kimg=12_000.0),
    # SIDDM on CIFAR-10 (Xu et al. 2023): D judges the marginal of x_t and G adds the auxiliary forward diffusion
    # with weight 1.0, the weight of the paper's best CIFAR-10 FID (2.24 at T = 4; 0: 77.15, the term alone:
    # 41.27, as its ablation is reported). Everything else, T = 4 included, is the cifar10 preset's: the paper's
    # full training setup could not be read here. Its D regulariser (D also denoises; 3.20 without it) is not
    # implemented, and the authors' public code has none.
    "cifar10_siddm": dict(data="cifar10", objective="siddm", ac_w=1.0),
    # CelebA-HQ 256: 8 GPUs x 4 images, 800 epochs of 30k images.
    "celeba256": dict(
        data="celeba256", image_size=256, num_channels_dae=64, ch_mult=(1, 1, 2, 2, 4, 4), num_timesteps=2,
        batch_size=32, kimg=24_000.0, ema_decay=0.999, r1_gamma=2.0, lr_d=1e-4, lr_g=2e-4, lazy_reg=10,
        n_mlp=3, snapshot_kimg=250.0, sample_kimg=250.0, grid_images=36,
    ),
    # LSUN Church 256: 8 GPUs x 8 images, 500 epochs of 120k images.
    "lsun256": dict(
        data="lsun256", image_size=256, num_channels_dae=64, ch_mult=(1, 1, 2, 2, 4, 4), num_timesteps=4,
        batch_size=64, kimg=60_000.0, ema_decay=0.999, r1_gamma=1.0, lr_d=1e-4, lr_g=1.6e-4, lazy_reg=10,
        n_mlp=3, snapshot_kimg=250.0, sample_kimg=250.0, grid_images=36,
    ),
    # WaveDiff's recipes (its run.sh; batch sizes are per process there): DDGAN on the 12-channel Haar wavelet
    # tensor at half the resolution, with the L1 reconstruction term.
    # CIFAR-10 in 1800 epochs; its run.sh builds the plain NCSN++ (no --net_type), attention nowhere but the
    # middle block (its "32" never occurs at 16 px).
    "cifar10_wavelet": dict(
        data="cifar10", space="wavelet", wavelet_order="pytorch_wavelets", ch_mult=(1, 2, 2), attn_resolutions=(),
        num_disc_layers=3, rec_loss=True,
    ),
    # STL-10 at 64 px (pass --data=PATH), 900 epochs of the 100k unlabeled images.
    "stl10_wavelet": dict(
        data="stl10", image_size=64, space="wavelet", wavelet_order="pytorch_wavelets", net_type="wavelet",
        ch_mult=(1, 2, 2, 2), attn_resolutions=(16,), num_disc_layers=4, rec_loss=True, kimg=90_000.0,
    ),
    # CelebA-HQ 256, 500 epochs of 30k images; WaveDiff's bundled band order.
    "celeba256_wavelet": dict(
        data="celeba256", image_size=256, space="wavelet", net_type="wavelet", num_channels_dae=64,
        ch_mult=(1, 2, 2, 2, 4), attn_resolutions=(16,), num_timesteps=2, n_mlp=3, num_disc_layers=5,
        rec_loss=True, batch_size=32, kimg=15_000.0, r1_gamma=2.0, lr_d=1e-4, lr_g=2e-4, lazy_reg=10,
        snapshot_kimg=250.0, sample_kimg=250.0, grid_images=36,
    ),
    # LSUN Church 256, 500 epochs.
    "lsun256_wavelet": dict(
        data="lsun256", image_size=256, space="wavelet", wavelet_order="pytorch_wavelets", net_type="wavelet",
        num_channels_dae=64, ch_mult=(1, 2, 2, 2, 4), attn_resolutions=(16,), num_timesteps=4, n_mlp=3,
        num_disc_layers=5, rec_loss=True, batch_size=16, kimg=60_000.0, ema_decay=0.999, r1_gamma=1.0, lr_d=1e-4,
        lr_g=1.6e-4, lazy_reg=10, snapshot_kimg=250.0, sample_kimg=250.0, grid_images=36,
    ),
    # LDDGAN's recipes (its run.sh, train mode): plain NCSN++ on an LDM autoencoder's latents over latent_scale
    # (LDDGAN's scale_factor). The autoencoder is left empty on purpose: these numbers only hold for the one
    # named in each comment, so the user passes it (--autoencoder, plus --autoencoder_config for an LDM .ckpt).
    # run.sh gives no batch size, learning rate or R1 weight, so those follow the same data's wavelet preset.
    # CIFAR-10, 2000 epochs of 50k images; expects LDDGAN's f2 KL autoencoder (16x16x4_551.ckpt with
    # cifar10_16x16x4.yaml: 4x16x16 latents). Its "32" attention never occurs at 16 px: only the middle block.
    "cifar10_latent": dict(
        data="cifar10", space="latent", latent_scale=105.0, ch_mult=(1, 2, 2), attn_resolutions=(), nz=50,
        discriminator="small", num_disc_layers=3, rec_loss=True, rec_loss_schedule="sigmoid", kimg=100_000.0,
    ),
    # CelebA-HQ 256, 500 epochs of 30k images; expects the VQ f4 first stage of LDM's CELEBA_config.yaml (its
    # checkpoint with that yaml: 3x64x64 latents). The CelebA trainer builds the large D.
    "celeba256_latent": dict(
        data="celeba256", image_size=256, space="latent", latent_scale=6.0, ch_mult=(1, 2, 2, 2),
        attn_resolutions=(16,), num_timesteps=2, n_mlp=3, discriminator="large", num_disc_layers=4, rec_loss=True,
        rec_loss_schedule="sigmoid", batch_size=32, kimg=15_000.0, r1_gamma=2.0, lr_d=1e-4, lr_g=2e-4, lazy_reg=10,
        snapshot_kimg=250.0, sample_kimg=250.0, grid_images=36,
    ),
    # LSUN Church 256, 1000 epochs of 120k images; expects the KL f8 first stage of LDM's LSUN_config.yaml (its
    # checkpoint with that yaml: 4x32x32 latents). run.sh trains it without the L1 term.
    "lsun256_latent": dict(
        data="lsun256", image_size=256, space="latent", latent_scale=60.0, ch_mult=(1, 2, 2, 2), num_res_blocks=3,
        attn_resolutions=(16,), num_timesteps=4, nz=50, n_mlp=3, discriminator="large", num_disc_layers=4,
        batch_size=16, kimg=120_000.0, ema_decay=0.999, r1_gamma=1.0, lr_d=1e-4, lr_g=1.6e-4, lazy_reg=10,
        snapshot_kimg=250.0, sample_kimg=250.0, grid_images=36,
    ),
    # Built-in shapes at 16 px, one class per shape, sized for about 7 minutes on 2 CPU cores (AMD EPYC).
    # Width 16 runs 120 img/s against 80 at width 32, and 3000 steps at a constant learning rate separate
    # circles from squares, which shorter or decaying runs draw alike (tuning runs in BENCHMARKS.md). At that
    # constant rate a class's accuracy swings between snapshots (real digits: 0.29 -> 0.91 -> 0.80); an EMA
    # over about 1000 steps (0.999) instead of 100 (0.99) averages over them: on the digits it lifted one
    # run's worst class from 0.80 to 0.90 and lowered another's from 0.95 to 0.85 (BENCHMARKS.md). What made
    # the weakest class reliable on real digits was D's class head (class_loss 1): worst digit 0.85-0.97
    # over six runs without it, 0.95-1.00 with it, at the cost of a linear layer. On the wider demo shapes
    # (issue #25: samples now vary within a class) squares part from circles late, after 36 kimg: EMA 0.999
    # still drew them as circles at 48 (0.52-0.86 on two seeds of three); 0.998 kept up (0.99 on seeds 0-2).
    # R1 gamma 0.2 drew every shape by 24 kimg on the old shapes, where 0.02 drew squares as circles.
    "demo": dict(
        data="demo", cond=True, image_size=16, num_channels_dae=16, ch_mult=(1, 2, 2), num_res_blocks=1,
        attn_resolutions=(), num_timesteps=2, nz=32, z_emb_dim=64, t_emb_dim=64, n_mlp=2, ngf=16,
        batch_size=16, kimg=48.0, lr_g=4e-4, lr_d=3e-4, no_lr_decay=True, ema_decay=0.998, r1_gamma=0.2,
        class_loss=1.0, lazy_reg=15, workers=0, log_every=20, snapshot_kimg=12.0, sample_kimg=6.0, fid_stats="",
        channels_last=False,
    ),
}
# Stacked-MNIST-style data at 16 px on a CPU (issue #33): MLPs on the flattened image, whose 768 numbers an MLP
# runs about ten times as fast as the smallest NCSN++ on 2 cores (1 320 against 138 img/s, AMD EPYC), so that
# 20 minutes see about 1.5 M images instead of 0.15 M. On stacked real digits (`python -m eval.modes make-data
# --task=digits --image_size=16`, passed as --data) every NCSN++ screen drew noise in that time; this draws
# digits. EMA 0.99 (0.999 lagged minutes behind G); cosine decay, T = 2, batch 256, R1 0.2 and D's minibatch
# stddev did not do better (BENCHMARKS.md). It covers 918-945 of the 1000 modes, not yet the 990.
PRESETS["stackmnist16"] = dict(
    data="stackmnist", image_size=16, hflip=False, net_type="mlp", discriminator="mlp", mlp_width=1024, mlp_depth=3,
    nz=64, t_emb_dim=64, num_timesteps=4, batch_size=128, kimg=1200.0, lr_g=2e-4, lr_d=2e-4, no_lr_decay=True,
    ema_decay=0.99, r1_gamma=0.05, workers=0, log_every=100, snapshot_kimg=200.0, sample_kimg=200.0, fid_stats="",
    channels_last=False,
)

# The demo sampled in one step: x'_0 = G(x_T, T - 1, z) is the image, as UFOGen samples. The demo's own objective
# kept its variety best there (issue #34, three seeds each at 48 kimg: every class 0.95-1.00 in one step, spread
# of centre 0.54-0.88 against 0.66-0.87 in two; SIDDM 0.62-0.81, UFOGen's 0.29-0.61), so only the sampling changes.
PRESETS["demo_onestep"] = {**PRESETS["demo"], "sample_steps": 1}


# The autoencoder each latent preset was made for, named in the error when --autoencoder is missing: the
# preset's numbers (latent_scale above all) mean nothing with another one.
LATENT_PRESET_AUTOENCODERS = {
    "cifar10_latent": "LDDGAN's --autoencoder=16x16x4_551.ckpt --autoencoder_config=cifar10_16x16x4.yaml",
    "celeba256_latent": "LDM's CelebA-HQ checkpoint with --autoencoder_config=CELEBA_config.yaml (its VQ f4 first "
                        "stage)",
    "lsun256_latent": "LDM's LSUN Church checkpoint with --autoencoder_config=LSUN_config.yaml (its KL f8 first "
                      "stage)",
}
