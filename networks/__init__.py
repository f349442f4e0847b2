"""Networks: plain nn.Modules, trained by the LightningModules in lightning_modules/."""
