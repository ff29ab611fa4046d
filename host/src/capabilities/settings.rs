//! `settings`: a handler's own `settings` table from `kasm.toml` (always granted), so a
//! handler gets configuration such as a webhook URL without the environment.

use crate::wit as bindings;

use super::state::CapabilityState;

impl bindings::kasm::handler::settings::Host for CapabilityState {
    fn get(&mut self, key: String) -> Option<String> {
        self.env.settings.get(&key).cloned()
    }
}
