"""The signed-in person, as every console route and API sees them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

ROLES = ("admin", "operator", "mediator")
ALL_COUNTRIES = "*"


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    display_name: str
    role: str                          # admin | operator | mediator
    countries: tuple[str, ...]         # ISO codes ("FR", "BE"); ("*",) = every country
    languages: tuple[str, ...]         # language forms the person reads: "fr", "ar", "ary", …
    active: bool = True

    @property
    def all_countries(self) -> bool:
        return ALL_COUNTRIES in self.countries

    def covers_country(self, country: Optional[str]) -> bool:
        """May this person see data of this country? Admins see everything; a conversation whose
        country is not known yet is visible only to those who cover every country."""
        if self.role == "admin" or self.all_countries:
            return True
        return country is not None and country.upper() in self.countries

    def has_role(self, *roles: str) -> bool:
        return self.role == "admin" or self.role in roles
