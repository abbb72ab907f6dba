"""The simulated catalog: categories, brands, prices and Zipf-like popularity."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    median_price: float
    consumable: bool
    repurchase_days: int  # typical days between repurchases of one consumable item


CATEGORIES: tuple[Category, ...] = (
    Category("electronics", 180.0, False, 0),
    Category("computers", 650.0, False, 0),
    Category("fashion", 45.0, False, 0),
    Category("shoes", 70.0, False, 0),
    Category("home", 55.0, False, 0),
    Category("garden", 35.0, False, 0),
    Category("toys", 25.0, False, 0),
    Category("books", 15.0, False, 0),
    Category("beauty", 18.0, True, 30),
    Category("grocery", 8.0, True, 10),
    Category("pet", 22.0, True, 21),
    Category("sports", 40.0, False, 0),
)
CATEGORY_INDEX = {c.name: i for i, c in enumerate(CATEGORIES)}
BRAND_STEMS = (
    "Acme", "Nordic", "Lumen", "Verde", "Kairo", "Solace", "Brio", "Tundra", "Mosaic", "Orbit",
    "Pioneer", "Harbor", "Zephyr", "Cobalt", "Juniper", "Atlas",
)  # fmt: skip
ZIPF_EXPONENT = 1.1


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    sku: str
    name: str
    category: int
    brand: str
    price: float
    popularity: float  # within its category, sums to 1 over the category

    def as_record(self) -> dict[str, object]:
        cat = CATEGORIES[self.category]
        return {
            "product_id": self.product_id,
            "sku": self.sku,
            "name": self.name,
            "category": cat.name,
            "brand": self.brand,
            "price": self.price,
            "currency": "USD",
            "consumable": cat.consumable,
            "popularity": round(self.popularity, 6),
        }


def build_catalog(n_products: int, rng: random.Random) -> list[Product]:
    """Products spread over categories; popularity ~ 1/rank^1.1 inside each category."""
    per_cat = [n_products // len(CATEGORIES)] * len(CATEGORIES)
    for i in range(n_products - sum(per_cat)):
        per_cat[i] += 1
    products: list[Product] = []
    for ci, (cat, count) in enumerate(zip(CATEGORIES, per_cat, strict=True)):
        weights = [1.0 / (rank**ZIPF_EXPONENT) for rank in range(1, count + 1)]
        total = sum(weights)
        brands = rng.sample(BRAND_STEMS, k=min(5, len(BRAND_STEMS)))
        for rank in range(count):
            price = round(cat.median_price * math.exp(rng.gauss(0.0, 0.6)), 2)
            pid = f"p{len(products) + 1:05d}"
            products.append(
                Product(
                    product_id=pid,
                    sku=f"{cat.name[:3].upper()}-{rank + 1:04d}",
                    name=f"{rng.choice(brands)} {cat.name} item {rank + 1}",
                    category=ci,
                    brand=brands[rank % len(brands)],
                    price=max(price, 0.99),
                    popularity=weights[rank] / total,
                )
            )
    return products
